"""Functional forms: the single implementation of every formula (modules and metrics call these)."""
from .linear_fractional import (
    fixed_constraint,
    linear_fractional_statistic,
    lse_penalty,
    norm_penalty,
    statistic_violation,
)
from .distance import (
    concatenated_distance_covariance_sqr,
    distance_correlation_sqr,
    distance_covariance_sqr,
    joint_distance_covariance_sqr,
)
from .projection import divergence_value, project, projection_residual

__all__ = [
    "linear_fractional_statistic",
    "statistic_violation",
    "norm_penalty",
    "lse_penalty",
    "fixed_constraint",
    "project",
    "divergence_value",
    "projection_residual",
    "distance_covariance_sqr",
    "distance_correlation_sqr",
    "joint_distance_covariance_sqr",
    "concatenated_distance_covariance_sqr",
]
