"""Lightning callbacks: add a fairret penalty, monitor fairness metrics, schedule λ (needs the ``lightning`` extra).

* :class:`FairnessRegularizer` adds ``λ · penalty`` to an unmodified LightningModule's training loss.
* :class:`FairnessMonitor` logs fairness metrics on validation and test epochs.
* :class:`LambdaSchedule` warms up and ramps λ, or steers it toward a target validation JSD.
* :class:`ModalityBalance` modulates each modality's gradients (OGM-GE, AGM) once per optimiser step.

Ready LightningCLI configs live in the repository's ``callbacks/`` folder (see its README), shipped in the wheel as
``fairret/lightning/configs``: :func:`config_path` returns the folder or one config's file from either.
"""
from .._extras import require_extra

require_extra("lightning", "fairret.lightning", "lightning")

from ._extract import PredictionCapture, select
from .cli import config_path
from .modality import ModalityBalance
from .monitor import FairnessMonitor
from .regularizer import FairnessRegularizer
from .schedule import LambdaSchedule

__all__ = ["FairnessRegularizer", "FairnessMonitor", "LambdaSchedule", "ModalityBalance", "PredictionCapture", "select",
           "config_path"]
