"""Functional forms: the single implementation of every formula (modules and metrics call these)."""
from .linear_fractional import (
    fixed_constraint,
    linear_fractional_statistic,
    lse_penalty,
    norm_penalty,
    statistic_violation,
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
]
