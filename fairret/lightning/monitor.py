r"""``FairnessMonitor``: fairness metrics on validation and test epochs, logged next to accuracy, and a summary.

Predictions are recorded from the module's forward (or a named submodule) during ``validation_step`` and
``test_step``, turned into probabilities (sigmoid/softmax when ``pred_as_logit``; a two-column output becomes the
positive class' probability), and fed with the batch's sensitive attributes (and labels) to torchmetrics metrics.
A :class:`~fairret.sensitive.SensitiveAttributes` batch entry is read as its
:meth:`~fairret.sensitive.SensitiveAttributes.group_matrix` by the rate metrics (both groups of a binary
attribute, as the rate losses read it) and as itself by the dependence metrics.
At the epoch end every metric is computed over the whole epoch (synchronised across DDP ranks by torchmetrics) and
logged under names that carry the metric, the statistic and the group (stage ``val`` or ``test``):

* ``{stage}/{log_prefix}/{name}``, e.g. ``val/fairness/dp_relative_gap``: the metric (for a stack of statistics
  such as equalised odds, the largest of their gaps);
* ``{stage}/{log_prefix}/{name}/{stat}``, e.g. ``val/fairness/eo_relative_gap/tpr``: each stacked statistic's gap;
* ``{stage}/{log_prefix}/{name}/{stat}/{group}``, e.g. ``val/fairness/dp_relative_gap/pr/sex=Female``: each
  group's statistic on the probabilities (``pr``: that group's mean predicted probability, a soft positive rate;
  ``tpr``, ``fpr`` for equalised odds: its mean probability over the rows with label 1, 0).

The gaps (``{name}`` and ``{name}/{stat}``) leave out groups with fewer than ``min_group_size`` rows over the epoch
(default 30, the rule of :func:`fairret.report.fairness_report`): a group of 2 rows does not set them. Those groups'
own values are still logged, and the summary table marks them ``(small)``. With fewer than two groups left (or
with a defined value), a gap is NaN.

Group names are ``group_names`` if given, else the data module's ``group_names`` attribute (as
:class:`~fairret.lightning.examples.TabularDataModule` has), else the
:meth:`~fairret.sensitive.SensitiveAttributes.group_names` of a :class:`~fairret.sensitive.SensitiveAttributes`
batch entry (``sex=Female``, ``sex=Male``), else ``group_0``, ``group_1``, ... Statistic names are the initials
of their class (``pr``, ``tpr``, ``fpr``; :func:`fairret._monitoring.statistic_names`).
When the logger accepts matplotlib figures (TensorBoard's ``add_figure``), each linear-fractional metric is also
drawn as a bar plot of the groups.

With ``summary=True`` a table (per group: n and each statistic; overall; max − min; relative gap; then JSD and
dCor², and a note on what the columns are) is printed on rank 0 at the end of ``trainer.validate`` and ``trainer.test``, and once after
``trainer.fit`` for its last validation epoch, like Lightning's own table of test results. Its figures come from
:func:`fairret.report.compare_groups` on the metrics' sums over the epoch, as :func:`fairret.report.fairness_report`
computes its tables.

When every prediction of a validation or test epoch gets the same decision (``prob > 0.5``, or the same arg-max
class), or the probabilities are constant, rank 0 warns with
:class:`~fairret._validation.CollapsedPredictionsWarning` (the usual causes, λ too large, one indicator column for
a binary attribute, probabilities monitored as logits, and their fixes in the message); not during Lightning's
sanity check.

Default metrics (``metrics=None``), built at the first batch once the number of groups is known:

* ``dp_relative_gap``: :class:`~fairret.metric.LinearFractionalParity` of the positive rate on the probabilities
  (demographic parity; the largest relative gap of a group's mean probability to the overall one,
  :func:`~fairret.metric.gap_relative_abs_max`; a fraction, not points);
* ``eo_relative_gap``: the same for the stacked true- and false-positive rates (equalised odds), when ``labels`` is
  set (the larger of the two);
* ``jsd``: :class:`~fairret.metric.IntersectionalJSD` across intersectional cells (the ``cells`` selector, or, for
  a 0/1 sensitive matrix, each distinct row of it: the intersection of all its columns);
* ``dcor``: :class:`~fairret.metric.DistanceCorrelation` between the probabilities and the attributes.

Example:
    >>> from fairret.lightning import FairnessMonitor
    >>> FairnessMonitor(sens="sens", labels="y", group_names=["sex=Female", "sex=Male"]).log_prefix
    'fairness'
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import lightning.pytorch as pl
import torch
import torchmetrics

from .._monitoring import FairnessResult, FairnessTracker, binary_cells, check_metrics, monitor_probabilities
from ..metric import LinearFractionalParity
from ._extract import PredictionCapture, Selector, check_selector, select

__all__ = ["FairnessMonitor", "binary_cells"]

_STAGES = ("validate", "test")


class FairnessMonitor(pl.Callback):
    """Logs fairness metrics over each validation and test epoch, named after metric, statistic and group.

    Args:
        metrics: name → torchmetrics metric. :class:`~fairret.metric.LinearFractionalParity` gets
            ``(prob, sens[, labels])`` (labels when its statistic ``requires_labels``), every
            :class:`~fairret.metric.DependenceMetric` (dCor², CCdCov², JdCov²) gets ``(prob, attributes)``,
            :class:`~fairret.metric.IntersectionalJSD` gets ``(prob, cells)``, any other metric
            ``(prob, labels)`` (e.g. ``torchmetrics.classification.BinaryAccuracy``). Default: see the module
            docstring.
        sens: selector of the groups in the batch: an ``(N, S)`` group matrix, or a SensitiveAttributes (its
            ``group_matrix()``).
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
        group_names: the names of the S columns of ``sens`` (``["sex=Female", "sex=Male"]``), used in the logged
            names, the plots and the summary; default: see the module docstring.
        summary: print the summary table after ``validate``, ``test`` and ``fit`` (rank 0).
        min_group_size: groups with fewer rows over the epoch are left out of the gaps, shown and marked
            ``(small)`` (the module docstring); default 30, as :func:`fairret.report.fairness_report`.

    Attributes:
        last_values: the latest logged value of every key the monitor logs (full names such as
            ``val/fairness/dp_relative_gap`` and ``val/fairness/dp_relative_gap/pr/sex=Female``), kept in the
            checkpoint.
        last_result: per stage (``"validate"``, ``"test"``), the latest :class:`~fairret._monitoring.FairnessResult`
            (its ``render(title)`` is the printed table).
    """

    def __init__(self, metrics: Optional[Dict[str, torchmetrics.Metric]] = None, sens: Selector = "sens",
                 labels: Selector = None, attributes: Selector = None, cells: Selector = None,
                 prediction_module: Optional[str] = None, prediction_output: Selector = None,
                 pred_as_logit: bool = True, stages: Sequence[str] = _STAGES, log_prefix: str = "fairness",
                 plot: bool = True, group_names: Optional[List[str]] = None, summary: bool = True,
                 min_group_size: int = 30):
        super().__init__()
        check_metrics(metrics)
        check_selector(sens, "sens", allow_none=False)
        for arg, value in (("labels", labels), ("attributes", attributes), ("cells", cells)):
            check_selector(value, arg)
        stages = tuple(stages)
        bad = [s for s in stages if s not in _STAGES]
        if not stages or bad:
            raise ValueError(f"Expected argument `stages` to hold 'validate' and/or 'test', but got {list(stages)}")
        self.tracker = FairnessTracker(metrics, group_names, min_group_size)
        self.sens, self.labels, self.attributes, self.cells = sens, labels, attributes, cells
        self.capture = PredictionCapture(prediction_module, prediction_output)
        self.pred_as_logit = bool(pred_as_logit)
        self.stages = stages
        self.log_prefix = log_prefix
        self.plot = bool(plot)
        self.summary = bool(summary)
        self.last_values: Dict[str, float] = {}
        self.last_result: Dict[str, FairnessResult] = {}

    def set_selection(self, sens: Selector = None, labels: Selector = None) -> None:
        """Replace the ``sens`` and/or ``labels`` selectors (``None``: keep); see
        :class:`~fairret.lightning.cli.FairnessCLI`."""
        if sens is not None:
            check_selector(sens, "sens", allow_none=False)
            self.sens = sens
        if labels is not None:
            check_selector(labels, "labels")
            self.labels = labels

    @property
    def metrics(self) -> Optional[Dict[str, torchmetrics.Metric]]:
        """The metrics (None until the first batch when the defaults are used)."""
        return self.tracker.metrics

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    # --- wiring -----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.capture.attach(pl_module, strict=False)  # retried at the start, once the module's setup has run

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.capture.detach()

    def _epoch_start(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.stages:
            return
        if not self.capture.attached:
            self.capture.attach(pl_module)
        # Lightning sets Trainer.datamodule in its data connector; the Trainer class does not declare it
        dm = trainer.datamodule  # type: ignore[attr-defined]
        names = getattr(dm, "group_names", None) if dm is not None else None
        if names and all(isinstance(n, str) for n in names):  # the data module's names, when it has them
            self.tracker.fallback_names = list(names)
        self.tracker.to(pl_module.device)
        self.tracker.reset()

    def _batch_start(self, stage: str) -> None:
        if stage in self.stages:
            self.capture.start()

    def _batch_end(self, stage: str, batch: Any) -> None:
        if stage not in self.stages:
            return
        self.capture.stop()
        prob = monitor_probabilities(self.capture.take(), self.pred_as_logit)
        sens = select(batch, self.sens, "sens")
        labels = select(batch, self.labels, "labels")
        attrs = select(batch, self.attributes, "attributes") if self.attributes is not None else None
        cells = select(batch, self.cells, "cells") if self.cells is not None else None
        self.tracker.update(prob, sens, labels, attrs, cells)

    def _epoch_end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.stages:
            return
        result = self.tracker.compute(warn=trainer.is_global_zero and not trainer.sanity_checking)
        if result is None:
            return
        tag = "val" if stage == "validate" else "test"
        prefix = f"{tag}/{self.log_prefix}"
        for key, value in result.prefixed(prefix).items():
            pl_module.log(key, value, sync_dist=False)  # already the value over all ranks
            self.last_values[key] = value
        if not trainer.sanity_checking:
            self.last_result[stage] = result
        if self.plot and trainer.is_global_zero and not trainer.sanity_checking:
            for name, metric in (self.tracker.metrics or {}).items():
                if isinstance(metric, LinearFractionalParity) and metric.update_called:
                    self._log_figure(trainer, metric, f"{prefix}/{name}", result.group_names)
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        if fn == stage and not trainer.sanity_checking:  # trainer.validate / trainer.test: print now
            self._print_summary(trainer, stage)

    def _print_summary(self, trainer: pl.Trainer, stage: str) -> None:
        result = self.last_result.get(stage)
        if self.summary and result is not None and trainer.is_global_zero:
            title = {"validate": "Fairness summary (validation)", "test": "Fairness summary (test)"}[stage]
            print(f"\n{result.render(title)}\n")

    @staticmethod
    def _log_figure(trainer: pl.Trainer, metric: LinearFractionalParity, key: str, names: List[str]) -> None:
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
            fig, _ = metric.plot(group_names=names if len(names) == metric.stat_shape[-1] else None)
            add_figure(key, fig, global_step=trainer.global_step)
            plt.close(fig)

    # --- Lightning hooks ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self._epoch_start("validate", trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        self._epoch_start("test", trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("validate")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end("validate", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end("test", batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._epoch_end("validate", trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._epoch_end("test", trainer, pl_module)

    def on_fit_start(self, trainer, pl_module):
        self.last_result.pop("validate", None)

    def on_fit_end(self, trainer, pl_module):
        self._print_summary(trainer, "validate")  # the last validation epoch of the fit

    # --- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"last_values": dict(self.last_values)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_values = dict(state_dict.get("last_values", {}))
