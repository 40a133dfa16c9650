r"""``FairnessRegularizer``: add ``λ · penalty`` to an unmodified LightningModule's training loss.

The callback wraps the module's ``training_step`` in ``setup`` (and unwraps it in ``teardown``): the wrapped step
records the predictions through a forward hook, runs the original step, and returns its loss plus
``λ · loss(pred, sens[, labels])``. There is one backward per step, done by Lightning as usual, so

* gradient accumulation divides the penalty by ``accumulate_grad_batches`` exactly like the task loss;
* under AMP the penalty is computed in float32 outside autocast and scaled with the task loss by the precision
  plugin (the fp16 ``GradScaler`` path included);
* under DDP the wrapped step runs inside the DDP forward. A fairret loss with ``sync_dist=True`` (the default)
  computes the *global-batch* penalty on every rank and gives each rank the global-batch gradient of its own
  rows; DDP then averages over ranks, which would divide the penalty's parameter gradient by the world size.
  The callback compensates: the returned term has the value ``λ · penalty`` and the gradient
  ``world_size · λ · ∇penalty``, so the averaged gradient equals the single-process full-batch gradient. A loss
  with ``sync_dist=False`` (or any custom callable) is a per-rank term and is averaged like the task loss.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from fairret.loss import NormLoss
    >>> from fairret.statistic import PositiveRate
    >>> from fairret.lightning import FairnessRegularizer
    >>> reg = FairnessRegularizer(NormLoss(PositiveRate()), lam=0.5, sens="sens", prediction_module="net")
    >>> reg.lam
    0.5
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

import lightning.pytorch as pl
import torch

from .._penalty import compute_penalty, weighted_penalty
from .._state import load_module_state
from .._validation import check_number
from ._extract import PredictionCapture, Selector, check_selector, peek_train_batch, select

__all__ = ["FairnessRegularizer", "compute_penalty"]


class FairnessRegularizer(pl.Callback):
    """Adds ``lam · loss(pred, sens[, labels])`` to the training loss of an unmodified LightningModule.

    Args:
        loss: a fairret loss module (``NormLoss(PositiveRate())``, ``CCdCovLoss()``, ...) or any module / callable
            ``loss(pred, sens, *labels, pred_as_logit=...)`` returning a scalar.
        lam: the weight λ ≥ 0 (a :class:`LambdaSchedule` may change it during training).
        sens: selector of the sensitive attributes in the batch (key, position, list of them, or callable);
            a list gives a list of tensors (one per attribute, for CCdCov/JdCov).
        labels: selector of the labels passed to the statistic (``None`` for statistics without arguments, such
            as ``PositiveRate``, and for the distance-covariance losses).
        prediction_module: dotted name of the submodule whose output are the predictions (default: the module's
            own forward, i.e. ``self(x)`` in ``training_step``).
        prediction_output: selector applied to that output when it is a tuple or dict.
        pred_as_logit: whether the predictions are logits (a sigmoid/softmax is applied by the loss).
        log_prefix: the penalty is logged as ``{log_prefix}/penalty`` and λ as ``{log_prefix}/lam``; also the
            key of this callback's checkpointed state.

    Raises:
        ValueError: at construction, for a negative or non-finite ``lam``, labels given to a loss or statistic
            that takes none (or missing for one that needs them), list-valued ``sens`` for a linear-fractional
            loss; at setup, for manual optimisation, an unknown ``prediction_module`` (at fit start for modules
            that build their layers in their own ``setup``) and a missing batch key or position (read from the
            first batch when the loader has no workers; otherwise before the first forward); at the first step,
            for a non-scalar penalty (the predictions exist only then).
    """

    def __init__(self, loss: torch.nn.Module, lam: float = 1.0, sens: Selector = "sens", labels: Selector = None,
                 prediction_module: Optional[str] = None, prediction_output: Selector = None,
                 pred_as_logit: bool = True, log_prefix: str = "train/fairness"):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"Expected argument `loss` to be a fairret loss module or a callable, but got "
                            f"{type(loss).__name__}")
        if not isinstance(log_prefix, str) or not log_prefix:
            raise ValueError(f"Expected argument `log_prefix` to be a non-empty string, but got {log_prefix!r}")
        self.loss = loss
        self._check_selection(sens, labels)
        self.lam = lam  # validated by the property
        self.sens = sens
        self.labels = labels
        self.capture = PredictionCapture(prediction_module, prediction_output)
        self.pred_as_logit = bool(pred_as_logit)
        self.log_prefix = log_prefix
        self.last_penalty: Optional[torch.Tensor] = None
        self._wrapped: Optional[torch.nn.Module] = None
        self._checked_batch = False

    def _check_selection(self, sens: Selector, labels: Selector) -> None:
        check_selector(sens, "sens", allow_none=False)
        check_selector(labels, "labels")
        loss = self.loss
        requires = getattr(loss, "requires_labels", None)  # a plain callable says nothing: not checked
        statistic = getattr(loss, "statistic", None)
        what = (f"the statistic {type(statistic).__name__} of the loss" if statistic is not None
                else f"the loss {type(loss).__name__}")
        if requires is True and labels is None:
            raise ValueError(f"{what[0].upper()}{what[1:]} takes the label: set argument `labels` to select it "
                             f"from the batch")
        if requires is False and labels is not None:
            raise ValueError(f"Argument `labels` is set, but {what} takes no labels; remove `labels`")
        if isinstance(sens, (list, tuple)) and statistic is not None:
            raise ValueError(f"Argument `sens` selects a list of parts, but the linear-fractional loss "
                             f"{type(loss).__name__} needs one (N, S) sensitive matrix; select a single tensor")

    def set_selection(self, sens: Selector = None, labels: Selector = None) -> None:
        """Replace the ``sens`` and/or ``labels`` selectors (``None``: keep), checked as in the constructor.

        ``labels`` is applied only when the loss takes labels (or does not say), so that one setting can serve
        every fairness callback (:class:`~fairret.lightning.cli.FairnessCLI`'s ``--fairness.labels``).
        """
        sens = self.sens if sens is None else sens
        if labels is None or getattr(self.loss, "requires_labels", None) is False:
            labels = self.labels
        self._check_selection(sens, labels)
        self.sens, self.labels = sens, labels

    @property
    def lam(self) -> float:
        """The current weight λ."""
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._lam = check_number(value, "lam")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    # --- wiring -----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError("FairnessRegularizer adds its penalty to the loss returned by `training_step` and needs "
                             "automatic optimisation; with manual optimisation add "
                             "`fairret.lightning.regularizer.compute_penalty(...)` to your loss yourself")
        self.capture.attach(pl_module, strict=False)  # retried at the start, once the module's setup has run
        if self._wrapped is not pl_module:
            original = pl_module.training_step

            def training_step(*args: Any, **kwargs: Any) -> Any:
                return self._step(pl_module, original, args, kwargs)

            setattr(pl_module, "training_step", training_step)  # instance attribute: the DDP wrapper calls it too
            self._wrapped = pl_module
        self._checked_batch = False
        batch = peek_train_batch(trainer)
        if batch is not None:  # name a missing batch key or position now rather than at the first step
            self._check_batch(batch)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.capture.detach()
        if self._wrapped is pl_module and "training_step" in pl_module.__dict__:
            del pl_module.training_step
        self._wrapped = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.capture.attached:
            self.capture.attach(pl_module)
        if isinstance(self.loss, torch.nn.Module):
            self.loss.to(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._checked_batch:  # not readable at setup: fail before the forward, naming the argument
            self._check_batch(batch)

    def _check_batch(self, batch: Any) -> None:
        select(batch, self.sens, "sens")
        select(batch, self.labels, "labels")
        self._checked_batch = True

    # --- the step -----------------------------------------------------------------------------------------------
    def _step(self, pl_module: pl.LightningModule, original: Callable, args: tuple, kwargs: dict) -> Any:
        batch = args[0] if args else kwargs.get("batch")
        with self.capture.recording():
            out = original(*args, **kwargs)
        if out is None:  # the user skipped this batch
            return out
        task = out["loss"] if isinstance(out, Mapping) else out
        if not isinstance(task, torch.Tensor):
            raise TypeError(f"FairnessRegularizer expected `training_step` to return a loss tensor or a dict with "
                            f"'loss', but got {type(out).__name__}")
        pred = self.capture.take()
        sens = select(batch, self.sens, "sens")
        labels = select(batch, self.labels, "labels")
        if self.lam > 0:
            penalty = compute_penalty(self.loss, pred, sens, labels, self.pred_as_logit)
            total = task + weighted_penalty(self.loss, penalty, self.lam).to(task.dtype)
        else:
            with torch.no_grad():
                penalty = compute_penalty(self.loss, pred.detach(), sens, labels, self.pred_as_logit)
            total = task
        self.last_penalty = penalty.detach()
        n = pred.shape[0]
        pl_module.log(f"{self.log_prefix}/penalty", self.last_penalty.float(), on_step=True, on_epoch=True,
                      batch_size=n)
        pl_module.log(f"{self.log_prefix}/lam", self.lam, on_step=True, on_epoch=False, batch_size=n)
        if isinstance(out, Mapping):
            out = dict(out)
            out["loss"] = total
            return out
        return total

    # --- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        loss_state = self.loss.state_dict() if isinstance(self.loss, torch.nn.Module) else {}
        return {"lam": self.lam, "loss": {k: v.detach().cpu() for k, v in loss_state.items()}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.lam = state_dict["lam"]
        if isinstance(self.loss, torch.nn.Module):
            load_module_state(self.loss, state_dict.get("loss", {}))
