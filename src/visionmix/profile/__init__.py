"""Measuring models the same way for every model: parameters, MACs, speed, memory.

``count_params`` / ``count_macs`` are the counters behind every model card. :func:`profile_model` measures one model
(a registered name or any ``nn.Module``) and :func:`compare_speed` holds two against each other, interleaved, so the
comparison survives a noisy machine. :mod:`visionmix.profile.report` turns results into tables, files and plots.
"""
from .core import (
    Comparison, PairedTiming, ProfileError, ProfileResult, compare_speed, profile_model, profile_models,
)
from .counting import count_macs, count_params
from .measure import Stats, gemm_peak_gflops
from .memory import MemoryResult, measure_peak_memory

__all__ = [
    'Comparison', 'MemoryResult', 'PairedTiming', 'ProfileError', 'ProfileResult', 'Stats', 'compare_speed',
    'count_macs', 'count_params', 'gemm_peak_gflops', 'measure_peak_memory', 'profile_model', 'profile_models',
]
