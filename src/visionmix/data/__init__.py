"""Datasets for training and comparing models, all local (visionmix never downloads data).

Every spec is ``KIND`` or ``KIND:ARG``; :func:`dataset_specs` lists the registered kinds (embedded sets such as
``digits`` and ``synthetic[:N]``, local layouts such as ``folder:PATH``, ``cifar10:PATH`` and ``segfolder:PATH``),
each tied to the task its items serve (:func:`dataset_task`).
"""
from .base import IMG_EXTENSIONS, DataError, DatasetInfo, ImageListDataset, check_images
from .datasets import DATASET_KINDS, DatasetKind, build_datasets, dataset_specs, dataset_task, parse_spec, \
    register_dataset
from .segmentation import SegmentationDataset

__all__ = ['DATASET_KINDS', 'DataError', 'DatasetInfo', 'DatasetKind', 'IMG_EXTENSIONS', 'ImageListDataset',
           'SegmentationDataset', 'build_datasets', 'check_images', 'dataset_specs', 'dataset_task', 'parse_spec',
           'register_dataset']
from . import instance_sets  # noqa: F401,E402  (registers shapes-inst, coins, coco)
from . import bpr_patches  # noqa: F401,E402  (registers bpr-patches:DIR)
