"""Analyses of fine-tuned models: loss landscapes, interpolation between
solutions, and dropout disagreement. They know nothing of GLUE or ROSE: a
loss function and parameters are all they need.
"""

from rose_jax.analysis.disagreement import dropout_disagreement
from rose_jax.analysis.landscape import (
    Evaluation,
    endpoint_sharpness,
    evaluate_points,
    filter_axes,
    filter_normalized_direction,
    flat_area,
    interpolation,
    interpolation_barrier,
    loss_surface,
)

__all__ = ['Evaluation', 'dropout_disagreement', 'endpoint_sharpness', 'evaluate_points',
           'filter_axes', 'filter_normalized_direction', 'flat_area', 'interpolation',
           'interpolation_barrier', 'loss_surface']
