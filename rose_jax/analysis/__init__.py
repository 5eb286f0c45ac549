"""Analyses of fine-tuned models: loss landscapes, interpolation between
solutions, and dropout disagreement. They know nothing of GLUE or ROSE: a
loss function and parameters are all they need.
"""

from rose_jax.analysis.disagreement import dropout_disagreement
from rose_jax.analysis.landscape import (
    endpoint_sharpness,
    filter_normalized_direction,
    flat_area,
    interpolation,
    interpolation_barrier,
    loss_surface,
)

__all__ = ['dropout_disagreement', 'endpoint_sharpness', 'filter_normalized_direction',
           'flat_area', 'interpolation', 'interpolation_barrier', 'loss_surface']
