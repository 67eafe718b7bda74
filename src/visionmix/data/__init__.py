"""Datasets for training and comparing models, all local (visionmix never downloads data).

Specs understood by :func:`build_datasets`:

* ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes), upscaled to RGB at the
  requested size, split 80/20 train/val with a fixed stratified split (``random_state=0``).
* ``synthetic`` / ``synthetic:N``: a deterministic generated dataset (see :mod:`visionmix.data.synthetic`).
* ``folder:PATH``: an ImageFolder tree with ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``.
* ``cifar10:PATH`` / ``cifar100:PATH``: the standard CIFAR python batches in a local directory, unpickled with an
  allow-list of NumPy's array globals, so a crafted file cannot run code.

Segmentation (images with masks, see :mod:`visionmix.data.segmentation`):

* ``synthetic-seg`` / ``synthetic-seg:N``: the synthetic shapes with their binary masks.
* ``segfolder:PATH``: the UNeXt layout, ``PATH/images/*.png`` with ``PATH/masks/0/*.png`` of the same stems.
"""
from .datasets import (DATASET_SPECS, DataError, DatasetInfo, ImageListDataset, build_datasets, check_images,
                       dataset_task, parse_spec)
from .segmentation import SegmentationDataset

__all__ = ['DATASET_SPECS', 'DataError', 'DatasetInfo', 'ImageListDataset', 'SegmentationDataset', 'build_datasets',
           'check_images', 'dataset_task', 'parse_spec']
