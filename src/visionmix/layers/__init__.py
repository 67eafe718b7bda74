"""Shared building blocks (token mixers, region rearrangement, window partition, ...).

Nothing here imports ``visionmix.models``: models compose layers, never the other way round.
"""
