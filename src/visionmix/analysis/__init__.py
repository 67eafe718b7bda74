"""Analysis tools that read models rather than train them: receptive fields (:mod:`visionmix.analysis.rf`)."""
from .rf import (
    coverage_report, effective_receptive_field, erf_report, erf_stats, feature_center, last_feature_map, plot_coverage,
    plot_erfs, to_json,
)

__all__ = [
    'coverage_report', 'effective_receptive_field', 'erf_report', 'erf_stats', 'feature_center', 'last_feature_map',
    'plot_coverage', 'plot_erfs', 'to_json',
]
