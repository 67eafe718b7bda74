"""Studies: a paper's conclusions as controlled experiments with statistics, built on the fair-comparison machinery.

``visionmix study spach`` (:func:`spach_study`) tests the five conclusions of SPACH ("A Battle of Network
Structures") with cost-matched pairs of the SPACH skeleton, several seeds, paired differences, 95% intervals and a
verdict per conclusion (:mod:`visionmix.study.stats`).
"""
from .spach import CONCLUSIONS, CONFIGS, StudyError, config_costs, pair_costs, spach_study
from .stats import combine_verdicts, paired_difference, verdict

__all__ = ['CONCLUSIONS', 'CONFIGS', 'StudyError', 'config_costs', 'pair_costs', 'spach_study', 'paired_difference',
           'verdict', 'combine_verdicts', 'STUDIES']

STUDIES = {'spach': spach_study}  # name -> runner, the choices of `visionmix study`
