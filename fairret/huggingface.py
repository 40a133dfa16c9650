r"""Fairness for Hugging Face ``transformers.Trainer``: any fairret loss as a penalty, and a fairness monitor.

* :class:`FairnessTrainerMixin` (or the ready :class:`FairnessTrainer`) overrides ``compute_loss`` to return
  ``task loss + λ · loss(pred, sens[, labels])`` in training, where ``pred`` is the model output's ``logits``
  (``prediction_output``) and ``sens`` a batch entry (``sens_key``) that is removed before the model's forward
  (and kept by the Trainer's column removal).
* :class:`FairnessMonitorCallback`, a ``TrainerCallback``, holds named fairness metrics that the mixin feeds
  during every evaluation; they are added to the evaluation metrics (``eval_fairness/dp_relative_gap``,
  ``eval_fairness/dp_relative_gap/pr/sex=Female``, as the Lightning monitor names them) before the Trainer logs
  them, and a summary table is printed after ``evaluate()`` and at the end of training (main process). The table's
  figures come from :func:`fairret.report.compare_groups`, as in the Lightning monitor; collapsed predictions (one
  decision for every row of an evaluation, or constant probabilities) warn on the main process
  (:class:`~fairret._validation.CollapsedPredictionsWarning`, the fixes in the message).

The semantics are those of :class:`fairret.lightning.FairnessRegularizer`:

* **gradient accumulation**: the penalty is computed on each micro-batch and scaled like the task loss. When the
  Trainer divides the returned loss by the number of accumulation steps (a per-batch mean task loss), the penalty
  is divided with it; when the task loss is already normalised over the whole accumulated batch (a model that takes
  ``num_items_in_batch``, a ``compute_loss_func``, or ``loss_is_scaled_for_ga=True``), the mixin divides the
  penalty by the number of accumulation steps itself. Either way one optimiser step sees
  ``mean over micro-batches of (∇task + λ ∇penalty)`` for a mean task loss.
* **AMP**: the penalty is computed in float32 outside autocast.
* **DDP**: a fairret loss with ``sync_dist=True`` (the default) computes the *global-batch* penalty on every rank;
  its gradient is multiplied by the world size so that DDP's averaging gives the single-process full-batch
  gradient (:func:`fairret._penalty.weighted_penalty`). A loss with ``sync_dist=False`` is a per-rank term,
  averaged like the task loss. (Tested with two gloo processes on the CPU, the Trainer setting DDP up from the
  environment: one step, with and without accumulation, for both of the Trainer's loss-scaling rules, gives every
  process the parameters of the single-process full-batch step.)
* **two-class heads**: a ``(N, 2)`` output (``AutoModelForSequenceClassification`` with two labels) is reduced to
  the positive class' logit ``logits[:, 1] - logits[:, 0]`` (probabilities: column 1) when ``binary_head`` is true
  (the default), so that binary statistics such as :class:`~fairret.statistic.PositiveRate` apply; other widths
  are passed as they are (one-vs-rest per class).

Example:
    >>> from transformers import Trainer
    >>> from fairret.loss import NormLoss
    >>> from fairret.statistic import PositiveRate
    >>> class MyTrainer(FairnessTrainerMixin, Trainer):
    ...     pass
    >>> # MyTrainer(model=model, args=args, train_dataset=ds, fairness_loss=NormLoss(PositiveRate()), lam=0.5,
    >>> #           callbacks=[FairnessMonitorCallback(group_names=["sex=Female", "sex=Male"])])
    >>> FairnessMonitorCallback(sens="sens").keys()  # the batch keys it reads
    ['sens', 'labels']
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ._extras import require_extra

require_extra("quant", "fairret.huggingface", "transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from ._monitoring import FairnessResult, FairnessTracker, check_metrics, monitor_probabilities  # noqa: E402
from ._penalty import compute_penalty, weighted_penalty  # noqa: E402
from ._validation import check_number  # noqa: E402

__all__ = ["FairnessTrainerMixin", "FairnessTrainer", "FairnessMonitorCallback"]

Key = Union[str, Sequence[str]]

if TYPE_CHECKING:
    # The mixin goes before transformers.Trainer in a trainer's bases and uses the Trainer's attributes and methods
    # (self.args, super().compute_loss, ...): the type checker sees it as a Trainer; at run time it is a plain mixin.
    _TrainerBase = Trainer
else:
    _TrainerBase = object


def _check_key(key: Any, name: str, allow_none: bool = True) -> None:
    if key is None and allow_none:
        return
    if isinstance(key, str) and key:
        return
    if isinstance(key, (list, tuple)) and key and all(isinstance(k, str) and k for k in key):
        return
    raise TypeError(f"Expected argument `{name}` to be a batch key (str) or a non-empty list of keys, but got {key!r}")


def _keys(key: Optional[Key]) -> List[str]:
    return [] if key is None else [key] if isinstance(key, str) else list(key)


def _take(batch: Dict[str, Any], key: Optional[Key], name: str) -> Any:
    if key is None:
        return None
    if isinstance(key, (list, tuple)):
        return [_take(batch, k, name) for k in key]
    if key not in batch:
        raise ValueError(f"Argument `{name}` selects key {key!r}, but the batch has keys {sorted(batch)}")
    return batch[key]


def _output(outputs: Any, key: Union[str, int], name: str = "prediction_output") -> torch.Tensor:
    try:
        out = outputs[key]
    except (KeyError, IndexError, TypeError):
        have = list(outputs.keys()) if hasattr(outputs, "keys") else f"{type(outputs).__name__}"
        raise ValueError(f"Argument `{name}`={key!r} selects nothing in the model output ({have})") from None
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"Expected the model output's {key!r} (argument `{name}`) to be a tensor, but got "
                        f"{type(out).__name__}")
    return out


def binary_head(pred: torch.Tensor, pred_as_logit: bool) -> torch.Tensor:
    """A ``(N, 2)`` output as one column: the logit ``pred[:, 1] - pred[:, 0]``, or ``pred[:, 1]`` for
    probabilities; other shapes unchanged.

    Example:
        >>> binary_head(torch.tensor([[0.5, 2.0]]), pred_as_logit=True)
        tensor([[1.5000]])
    """
    if pred.ndim == 2 and pred.shape[1] == 2:
        return pred[:, 1:] - pred[:, :1] if pred_as_logit else pred[:, 1:]
    return pred


class FairnessMonitorCallback(TrainerCallback):
    """Fairness metrics over every evaluation of a Trainer with :class:`FairnessTrainerMixin`.

    Args:
        metrics, group_names, min_group_size: as in :class:`fairret.lightning.FairnessMonitor` (default metrics:
            demographic-parity and, with labels, equalised-odds relative gaps, the JSD across cells, dCor²; groups
            with fewer than ``min_group_size`` rows, default 30, are left out of the gaps).
        sens: batch key of the groups: an ``(N, S)`` group matrix, or a SensitiveAttributes (a collator's; its
            ``group_matrix()``, both groups of a binary attribute).
        labels: batch key of the labels (default ``"labels"``, the Trainer's; ``None`` for none).
        attributes: batch key(s) of the dependence metrics' attributes (default ``sens``).
        cells: batch key of ``(N,)`` intersectional cell ids for the JSD (default: from a 0/1 ``sens``).
        prediction_output: key (or position) of the predictions in the model output.
        pred_as_logit: whether they are logits (a two-column output is reduced to the positive class).
        metric_prefix: the metrics are ``{eval prefix}_{metric_prefix}/{name}`` (``eval_fairness/jsd``).
        summary: print the summary table after ``evaluate()`` and at the end of training (for its last
            evaluation), on the main process.

    Attributes:
        last_result: the latest :class:`~fairret._monitoring.FairnessResult`.
    """

    def __init__(self, metrics: Optional[Dict[str, Any]] = None, sens: Key = "sens", labels: Optional[str] = "labels",
                 attributes: Optional[Key] = None, cells: Optional[str] = None,
                 prediction_output: Union[str, int] = "logits", pred_as_logit: bool = True,
                 group_names: Optional[List[str]] = None, metric_prefix: str = "fairness", summary: bool = True,
                 min_group_size: int = 30):
        _check_key(sens, "sens", allow_none=False)
        for name, key in (("labels", labels), ("attributes", attributes), ("cells", cells)):
            _check_key(key, name)
        self.tracker = FairnessTracker(check_metrics(metrics), group_names, min_group_size)
        self.sens, self.labels, self.attributes, self.cells = sens, labels, attributes, cells
        self.prediction_output = prediction_output
        self.pred_as_logit = bool(pred_as_logit)
        self.metric_prefix = metric_prefix
        self.summary = bool(summary)
        self.last_result: Optional[FairnessResult] = None
        self._title = "eval"
        self._fed = False
        self._training = False

    def keys(self) -> List[str]:
        """The batch keys this monitor reads (the mixin keeps them through column removal)."""
        return list(dict.fromkeys(_keys(self.sens) + _keys(self.labels) + _keys(self.attributes) + _keys(self.cells)))

    # --- fed by the mixin ---------------------------------------------------------------------------------------
    def start(self, device: Any) -> None:
        self.tracker.to(device)
        self.tracker.reset()

    def update(self, outputs: Any, batch: Dict[str, Any]) -> None:
        prob = monitor_probabilities(_output(outputs, self.prediction_output), self.pred_as_logit)
        self.tracker.update(prob, _take(batch, self.sens, "sens"), _take(batch, self.labels, "labels"),
                            _take(batch, self.attributes, "attributes"), _take(batch, self.cells, "cells"))
        self._fed = True

    def finish(self, metric_key_prefix: str, warn: bool = True) -> Dict[str, float]:
        result = self.tracker.compute(warn=warn) if self._fed else None
        self._fed = False
        if result is None:
            return {}
        self.last_result, self._title = result, metric_key_prefix
        return result.prefixed(f"{metric_key_prefix}_{self.metric_prefix}")

    # --- Trainer events -------------------------------------------------------------------------------------------
    def _print(self, state: Any) -> None:
        if self.summary and self.last_result is not None and state.is_world_process_zero:
            print(f"\n{self.last_result.render(f'Fairness summary ({self._title})')}\n")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.last_result is None:
            warnings.warn("FairnessMonitorCallback received no predictions: use a Trainer with "
                          "fairret.huggingface.FairnessTrainerMixin (or FairnessTrainer)", stacklevel=2)
        elif not self._training:  # during training: once, at its end
            self._print(state)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self._print(state)


class FairnessTrainerMixin(_TrainerBase):
    """Adds a fairret penalty to ``Trainer.compute_loss`` and feeds :class:`FairnessMonitorCallback`.

    Put it before ``Trainer`` in the bases (``class MyTrainer(FairnessTrainerMixin, Trainer)``), or use
    :class:`FairnessTrainer`. Keyword arguments (all others go to the Trainer):

    Args:
        fairness_loss: a fairret loss (``NormLoss(PositiveRate())``, ``CCdCovLoss()``, ...) or any callable
            ``loss(pred, sens, *labels, pred_as_logit=...)`` returning a scalar; ``None``: monitor only.
        lam: the weight λ ≥ 0 (settable later: ``trainer.lam = ...``).
        sens_key: batch key of the sensitive attributes (a list of keys gives a list of tensors, for CCdCov/JdCov).
        labels_key: batch key of the labels given to the statistic; default ``"labels"`` when the loss takes labels
            (:attr:`~fairret.statistic.Statistic.requires_labels`), else none.
        prediction_output: key (or position) of the predictions in the model output (default ``"logits"``).
        pred_as_logit: whether the predictions are logits.
        binary_head: reduce a two-column output to the positive class (see the module docstring).

    The penalty is added in training only (``model.training``); the evaluation loss is the task loss. The last
    penalty is in ``trainer.last_penalty`` and is logged as ``fairness_penalty`` with the Trainer's own logs.
    """

    def __init__(self, *args: Any, fairness_loss: Any = None, lam: float = 1.0, sens_key: Key = "sens",
                 labels_key: Optional[str] = None, prediction_output: Union[str, int] = "logits",
                 pred_as_logit: bool = True, binary_head: bool = True, **kwargs: Any):
        if fairness_loss is not None and not callable(fairness_loss):
            raise TypeError(f"Expected argument `fairness_loss` to be a fairret loss module or a callable, but got "
                            f"{type(fairness_loss).__name__}")
        _check_key(sens_key, "sens_key", allow_none=False)
        _check_key(labels_key, "labels_key")
        requires = getattr(fairness_loss, "requires_labels", None)
        if labels_key is None and requires is True:
            labels_key = "labels"
        if labels_key is not None and requires is False:
            raise ValueError(f"Argument `labels_key` is set, but the loss {type(fairness_loss).__name__} takes no "
                             f"labels; remove `labels_key`")
        if isinstance(sens_key, (list, tuple)) and getattr(fairness_loss, "statistic", None) is not None:
            raise ValueError(f"Argument `sens_key` selects a list of keys, but the linear-fractional loss "
                             f"{type(fairness_loss).__name__} needs one (N, S) sensitive matrix")
        self.fairness_loss = fairness_loss
        self.lam = check_number(lam, "lam")
        self.sens_key, self.labels_key = sens_key, labels_key
        self.prediction_output = prediction_output
        self.pred_as_logit, self.binary_head = bool(pred_as_logit), bool(binary_head)
        self.last_penalty: Optional[torch.Tensor] = None
        self._penalty_sum, self._penalty_count = 0.0, 0
        super().__init__(*args, **kwargs)
        if isinstance(fairness_loss, torch.nn.Module):
            fairness_loss.to(self.args.device)

    # --- batch keys -----------------------------------------------------------------------------------------------
    def _monitors(self) -> List[FairnessMonitorCallback]:
        return [c for c in self.callback_handler.callbacks if isinstance(c, FairnessMonitorCallback)]

    def _fairness_keys(self) -> List[str]:
        keys = _keys(self.sens_key) + _keys(self.labels_key)
        for m in self._monitors():
            keys += m.keys()
        return list(dict.fromkeys(keys))

    def _split(self, inputs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``(model inputs, batch)``: the fairness-only keys are removed from what the model receives."""
        keep = set(self.label_names) | {"labels", "label", "label_ids"}
        drop = [k for k in self._fairness_keys() if k not in keep]
        return {k: v for k, v in inputs.items() if k not in drop}, inputs

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            self._signature_columns = list(dict.fromkeys(list(self._signature_columns) + self._fairness_keys()))

    # --- training -------------------------------------------------------------------------------------------------
    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """Whether the Trainer leaves the returned loss undivided by the accumulation steps (its own rule)."""
        flag = getattr(self, "loss_is_scaled_for_ga", None)
        if flag is not None:
            return bool(flag)
        return bool((getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
                    or getattr(self, "compute_loss_func", None) is not None)

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        model_inputs, batch = self._split(inputs)
        labels = _take(batch, self.labels_key, "labels_key")  # before the Trainer may pop them
        if num_items_in_batch is not None:  # older Trainers neither give nor take it (transformers < 4.46)
            kwargs["num_items_in_batch"] = num_items_in_batch
        loss, outputs = super().compute_loss(model, model_inputs, return_outputs=True, **kwargs)
        if self.fairness_loss is not None and model.training:
            pred = _output(outputs, self.prediction_output)
            if self.binary_head:
                pred = binary_head(pred, self.pred_as_logit)
            sens = _take(batch, self.sens_key, "sens_key")
            if self.lam > 0:
                penalty = compute_penalty(self.fairness_loss, pred, sens, labels, self.pred_as_logit)
                term = weighted_penalty(self.fairness_loss, penalty, self.lam)
                if self._loss_scaled_for_ga(num_items_in_batch):
                    steps = getattr(self, "current_gradient_accumulation_steps", None)
                    term = term / (steps or self.args.gradient_accumulation_steps)
                loss = loss + term.to(loss.dtype)
            else:
                with torch.no_grad():
                    penalty = compute_penalty(self.fairness_loss, pred.detach(), sens, labels, self.pred_as_logit)
            self.last_penalty = penalty.detach()
            self._penalty_sum += float(self.last_penalty)
            self._penalty_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._penalty_count and "loss" in logs:  # a training log: the mean penalty since the last one
            logs = {**logs, "fairness_penalty": self._penalty_sum / self._penalty_count, "fairness_lam": self.lam}
            self._penalty_sum, self._penalty_count = 0.0, 0
        super().log(logs, *args, **kwargs)

    # --- evaluation -----------------------------------------------------------------------------------------------
    def prediction_step(self, model: torch.nn.Module, inputs: Dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Optional[List[str]] = None) -> Any:
        monitors = self._monitors()
        model_inputs, batch = self._split(inputs)
        if not monitors:
            return super().prediction_step(model, model_inputs, prediction_loss_only, ignore_keys)
        seen: List[Any] = []
        handle = model.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            result = super().prediction_step(model, model_inputs, prediction_loss_only, ignore_keys)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError("The model's forward was not called during the evaluation step, so the fairness "
                               "monitor has no predictions")
        batch = self._prepare_inputs(batch)
        for m in monitors:
            m.update(seen[-1], batch)
        return result

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: Optional[bool] = None,
                        ignore_keys: Optional[List[str]] = None, metric_key_prefix: str = "eval") -> Any:
        monitors = self._monitors()
        for m in monitors:
            m.start(self.args.device)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        for m in monitors:
            if output.metrics is None:  # the Trainer's evaluation loop always returns its metrics dict
                raise RuntimeError("The Trainer's evaluation loop returned no metrics to add the fairness values to")
            output.metrics.update(m.finish(metric_key_prefix, warn=self.is_world_process_zero()))
        return output


class FairnessTrainer(FairnessTrainerMixin, Trainer):
    """``transformers.Trainer`` with a fairret penalty and the fairness monitor (see
    :class:`FairnessTrainerMixin` for the extra arguments)."""
