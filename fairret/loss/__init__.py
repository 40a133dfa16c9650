"""Fairness losses (``from fairret.loss import NormLoss`` as in fairret 0.1.3)."""
from .base import FairnessLoss
from .distance import CCdCovLoss, DistanceCorrelationLoss, DistanceCovarianceLoss, JdCovLoss
from .projection import (
    ChiSquaredProjectionLoss,
    JensenShannonProjectionLoss,
    KLProjectionLoss,
    ProjectionLoss,
    SquaredEuclideanProjectionLoss,
    TotalVariationProjectionLoss,
)
from .violation import LSELoss, NormLoss, ViolationLoss

__all__ = [
    "FairnessLoss",
    "ViolationLoss",
    "NormLoss",
    "LSELoss",
    "ProjectionLoss",
    "KLProjectionLoss",
    "JensenShannonProjectionLoss",
    "TotalVariationProjectionLoss",
    "SquaredEuclideanProjectionLoss",
    "ChiSquaredProjectionLoss",
    "DistanceCovarianceLoss",
    "DistanceCorrelationLoss",
    "JdCovLoss",
    "CCdCovLoss",
]
