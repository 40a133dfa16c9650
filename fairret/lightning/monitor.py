r"""``FairnessMonitor``: fairness metrics on validation and test epochs, logged next to accuracy.

Predictions are recorded from the module's forward (or a named submodule) during ``validation_step`` and
``test_step``, turned into probabilities (sigmoid/softmax when ``pred_as_logit``), and fed with the batch's
sensitive attributes (and labels) to torchmetrics metrics. At the epoch end every metric is computed over the whole
epoch (synchronised across DDP ranks by torchmetrics) and logged as ``{stage}/{log_prefix}/{name}``, e.g.
``val/fairness/dp_relative_gap``; linear-fractional metrics also log each group's value
(``.../dp_relative_gap/group_k``) and, when the logger accepts matplotlib figures (TensorBoard's ``add_figure``), a
bar plot of them.

Default metrics (``metrics=None``), built at the first batch once the number of groups is known:

* ``dp_relative_gap``: :class:`~fairret.metric.LinearFractionalParity` of the positive rate on the probabilities
  (demographic parity; the largest relative gap of a group's rate to the overall rate,
  :func:`~fairret.metric.gap_relative_abs_max`; a fraction, not points);
* ``eo_relative_gap``: the same for the stacked true- and false-positive rates (equalised odds), when ``labels`` is
  set (the larger of the two);
* ``jsd``: :class:`~fairret.metric.IntersectionalJSD` across intersectional cells (the ``cells`` selector, or, for
  a 0/1 sensitive matrix, each distinct row of it: the intersection of all its columns);
* ``dcor``: :class:`~fairret.metric.DistanceCorrelation` between the probabilities and the attributes.

Example:
    >>> from fairret.lightning import FairnessMonitor
    >>> FairnessMonitor(sens="sens", labels="y").log_prefix
    'fairness'
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import lightning.pytorch as pl
import torch
import torchmetrics

from .._validation import to_probabilities
from ..metric import DependenceMetric, DistanceCorrelation, IntersectionalJSD, LinearFractionalParity
from ..statistic import FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate
from ._extract import PredictionCapture, Selector, check_selector, select

__all__ = ["FairnessMonitor", "binary_cells"]

_STAGES = ("validate", "test")


def binary_cells(sens: torch.Tensor) -> Optional[torch.Tensor]:
    """Cell ids of the rows of a 0/1 matrix (bit ``j`` = column ``j``), consistent across batches; else None."""
    sens = sens.reshape(sens.shape[0], -1)
    if sens.shape[1] > 62 or not bool(((sens == 0) | (sens == 1)).all()):
        return None
    weights = 2 ** torch.arange(sens.shape[1], device=sens.device, dtype=torch.long)
    return (sens.long() * weights).sum(1)


class FairnessMonitor(pl.Callback):
    """Logs fairness metrics over each validation and test epoch.

    Args:
        metrics: name → torchmetrics metric. :class:`~fairret.metric.LinearFractionalParity` gets
            ``(prob, sens[, labels])`` (labels when its statistic ``requires_labels``), every
            :class:`~fairret.metric.DependenceMetric` (dCor², CCdCov², JdCov²) gets ``(prob, attributes)``,
            :class:`~fairret.metric.IntersectionalJSD` gets ``(prob, cells)``, any other metric
            ``(prob, labels)`` (e.g. ``torchmetrics.classification.BinaryAccuracy``). Default: see the module
            docstring.
        sens: selector of the ``(N, S)`` sensitive matrix in the batch.
        labels: selector of the labels (needed by label-conditioned statistics and plain metrics).
        attributes: selector of the attributes for the dependence metrics (default ``sens``); a list selects one
            attribute per entry, as ``sens`` does for the dependence losses in
            :class:`~fairret.lightning.FairnessRegularizer` (CCdCov weights per entry, JdCov one variable each).
        cells: selector of ``(N,)`` intersectional cell ids for the JSD (default: derived from a 0/1 ``sens``).
        prediction_module, prediction_output, pred_as_logit: as in
            :class:`~fairret.lightning.FairnessRegularizer`.
        stages: where to monitor: ``"validate"`` and/or ``"test"``.
        log_prefix: metric names are ``{stage}/{log_prefix}/{name}`` with stage ``val`` or ``test``.
        plot: log per-group bar plots when the logger accepts figures.
    """

    def __init__(self, metrics: Optional[Dict[str, torchmetrics.Metric]] = None, sens: Selector = "sens",
                 labels: Selector = None, attributes: Selector = None, cells: Selector = None,
                 prediction_module: Optional[str] = None, prediction_output: Selector = None,
                 pred_as_logit: bool = True, stages: Sequence[str] = _STAGES, log_prefix: str = "fairness",
                 plot: bool = True):
        super().__init__()
        if metrics is not None:
            if not isinstance(metrics, dict) or not metrics:
                raise TypeError(f"Expected argument `metrics` to be a non-empty dict of name -> torchmetrics Metric, "
                                f"but got {metrics!r}")
            for name, m in metrics.items():
                if not isinstance(m, torchmetrics.Metric):
                    raise TypeError(f"Expected `metrics[{name!r}]` to be a torchmetrics Metric, but got "
                                    f"{type(m).__name__}")
        check_selector(sens, "sens", allow_none=False)
        for arg, value in (("labels", labels), ("attributes", attributes), ("cells", cells)):
            check_selector(value, arg)
        stages = tuple(stages)
        bad = [s for s in stages if s not in _STAGES]
        if not stages or bad:
            raise ValueError(f"Expected argument `stages` to hold 'validate' and/or 'test', but got {list(stages)}")
        self.metrics: Optional[Dict[str, torchmetrics.Metric]] = dict(metrics) if metrics else None
        self.sens, self.labels, self.attributes, self.cells = sens, labels, attributes, cells
        self.capture = PredictionCapture(prediction_module, prediction_output)
        self.pred_as_logit = bool(pred_as_logit)
        self.stages = stages
        self.log_prefix = log_prefix
        self.plot = bool(plot)
        self.last_values: Dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    # --- wiring -----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.capture.attach(pl_module, strict=False)  # retried at the start, once the module's setup has run

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.capture.detach()

    def _default_metrics(self, sens: torch.Tensor, has_labels: bool, has_cells: bool) -> Dict[str, torchmetrics.Metric]:
        s = sens.reshape(sens.shape[0], -1).shape[1]
        metrics: Dict[str, torchmetrics.Metric] = {"dp_relative_gap": LinearFractionalParity(PositiveRate(), s)}
        if has_labels:
            eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
            metrics["eo_relative_gap"] = LinearFractionalParity(eo, (2, s))
        if has_cells:
            metrics["jsd"] = IntersectionalJSD()
        metrics["dcor"] = DistanceCorrelation()
        return metrics

    def _epoch_start(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage not in self.stages:
            return
        if not self.capture.attached:
            self.capture.attach(pl_module)
        if self.metrics is None:
            return
        for m in self.metrics.values():
            m.to(pl_module.device)
            m.reset()

    def _batch_start(self, stage: str) -> None:
        if stage in self.stages:
            self.capture.start()

    def _batch_end(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        if stage not in self.stages:
            return
        self.capture.stop()
        pred = self.capture.take().detach()
        if pred.ndim == 1:
            pred = pred.unsqueeze(1)
        pred = pred.float()
        if self.pred_as_logit:
            pred = to_probabilities(pred)
        sens = select(batch, self.sens, "sens")
        labels = select(batch, self.labels, "labels")
        attrs = select(batch, self.attributes, "attributes") if self.attributes is not None else sens
        cells = select(batch, self.cells, "cells") if self.cells is not None else binary_cells(sens)
        if self.metrics is None:
            self.metrics = self._default_metrics(sens, labels is not None, cells is not None)
            for m in self.metrics.values():
                m.to(pl_module.device)
        for name, metric in self.metrics.items():
            if isinstance(metric, LinearFractionalParity):
                if metric.requires_labels:
                    if labels is None:
                        raise ValueError(f"Metric {name!r} ({type(metric.stat).__name__}) takes the label: set "
                                         f"argument `labels`")
                    metric.update(pred, sens, labels)
                else:
                    metric.update(pred, sens)
            elif isinstance(metric, IntersectionalJSD):
                if cells is None:
                    raise ValueError(f"Metric {name!r} needs intersectional cells: set argument `cells` (the 0/1 "
                                     f"`sens` rule does not apply to this batch's sensitive matrix)")
                metric.update(pred[:, -1], cells)
            elif isinstance(metric, DependenceMetric):
                metric.update(pred, attrs)
            else:
                if labels is None:
                    raise ValueError(f"Metric {name!r} ({type(metric).__name__}) is updated with (prob, labels): set "
                                     f"argument `labels`")
                metric.update(pred.squeeze(1) if pred.shape[1] == 1 else pred, labels)

    def _epoch_end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.stages or self.metrics is None:
            return
        tag = "val" if stage == "validate" else "test"
        for name, metric in self.metrics.items():
            if not metric.update_called:
                continue
            key = f"{tag}/{self.log_prefix}/{name}"
            value = torch.as_tensor(metric.compute()).float()
            if value.numel() > 1:  # e.g. one gap per stacked statistic: log each, and the largest as the metric
                for k, v in enumerate(value.reshape(-1).tolist()):
                    pl_module.log(f"{key}/stat_{k}", v)
                value = value.max()
            self.last_values[key] = float(value)
            pl_module.log(key, value, sync_dist=False)
            if isinstance(metric, LinearFractionalParity):
                per_group = metric.compute_per_group()
                rows = per_group.reshape(-1, per_group.shape[-1]).tolist()
                for k, row in enumerate(rows):
                    stat = f"/stat_{k}" if len(rows) > 1 else ""
                    for g, v in enumerate(row):
                        if v == v:  # skip groups never seen (NaN)
                            pl_module.log(f"{key}{stat}/group_{g}", float(v))
                if self.plot and trainer.is_global_zero and not trainer.sanity_checking:
                    self._log_figure(trainer, metric, key)

    @staticmethod
    def _log_figure(trainer: pl.Trainer, metric: LinearFractionalParity, key: str) -> None:
        for logger in trainer.loggers:
            add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
            if add_figure is None:
                continue
            try:
                import matplotlib

                matplotlib.use("Agg", force=False)
                import matplotlib.pyplot as plt
            except ImportError:
                return
            fig, _ = metric.plot()
            add_figure(key, fig, global_step=trainer.global_step)
            plt.close(fig)

    # --- Lightning hooks ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self._epoch_start("validate", pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        self._epoch_start("test", pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("validate")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end("validate", pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end("test", pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._epoch_end("validate", trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._epoch_end("test", trainer, pl_module)

    # --- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"last_values": dict(self.last_values)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_values = dict(state_dict.get("last_values", {}))
