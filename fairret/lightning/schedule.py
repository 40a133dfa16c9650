r"""``LambdaSchedule``: warm-up and ramps of λ, or λ steered toward a target validation JSD.

λ at optimiser step :math:`t` (``trainer.global_step``) is :math:`\lambda_t = r(t)\,\lambda_{base}` where the ramp

.. math:: r(t) = 0 \ (t < w), \qquad r(t) = \rho\!\left(\min(1, (t - w + 1) / R)\right) \ (t \ge w)

has ``warmup_steps`` :math:`w`, ``ramp_steps`` :math:`R` (0: a step to 1 after the warm-up) and shape
:math:`\rho(u) = u` (``linear``) or :math:`(1 - \cos \pi u)/2` (``cosine``).

*Fixed mode* (``target_jsd=None``): :math:`\lambda_{base}` = ``lam``.

*Target mode*: :math:`\lambda_{base}` starts at ``lam`` and, after each validation epoch past the warm-up, moves
multiplicatively toward the λ whose validation JSD (logged by :class:`FairnessMonitor` under ``monitor``) equals
``target_jsd``:

.. math:: \lambda_{base} \leftarrow \mathrm{clip}\big(\lambda_{base}\,(\mathrm{JSD}/\mathrm{JSD}^*)^{g},\
          \lambda_{min}, \lambda_{max}\big)

with ``gain`` :math:`g`. The JSD falls roughly as a power of λ (Lee et al. 2025 calibrate λ on that curve), so this
is a step of Newton's method on the log-log curve when :math:`g` is the inverse of the curve's slope; the default
:math:`g = 1` takes cautious steps. Each (step, λ, JSD) is kept in :attr:`history`.

The schedule sets λ in ``on_train_batch_start``, so a checkpoint resumed at step :math:`t` continues with exactly
the λ it would have had; the adaptive :math:`\lambda_{base}` and the history are checkpointed.

Example:
    >>> from fairret.lightning import LambdaSchedule
    >>> s = LambdaSchedule(lam=2.0, warmup_steps=10, ramp_steps=4)
    >>> [s.lam_at(t) for t in (0, 9, 10, 11, 13, 100)]
    [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import lightning.pytorch as pl

from .._validation import check_number
from .regularizer import FairnessRegularizer

__all__ = ["LambdaSchedule"]


class LambdaSchedule(pl.Callback):
    """Sets the λ of a :class:`FairnessRegularizer` every step (see the module docstring for the rule).

    Args:
        lam: λ after the ramp (fixed mode) or its starting value (target mode).
        warmup_steps: optimiser steps with λ = 0.
        ramp_steps: optimiser steps to ramp from 0 to full λ after the warm-up (0: no ramp).
        ramp: ``linear`` or ``cosine``.
        target_jsd: target validation JSD (bits); enables target mode.
        monitor: the logged metric compared with ``target_jsd``.
        gain: exponent of the multiplicative update (> 0).
        lam_min, lam_max: bounds of λ in target mode.
        regularizer: ``log_prefix`` of the FairnessRegularizer to drive when there are several (default: the only
            one).
    """

    def __init__(self, lam: float = 1.0, warmup_steps: int = 0, ramp_steps: int = 0, ramp: str = "linear",
                 target_jsd: Optional[float] = None, monitor: str = "val/fairness/jsd", gain: float = 1.0,
                 lam_min: float = 1e-4, lam_max: float = 1e4, regularizer: Optional[str] = None):
        super().__init__()
        self.lam = check_number(lam, "lam")
        for name, v in (("warmup_steps", warmup_steps), ("ramp_steps", ramp_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Expected argument `{name}` to be an int >= 0, but got {v!r}")
        if ramp not in ("linear", "cosine"):
            raise ValueError(f"Expected argument `ramp` to be 'linear' or 'cosine', but got {ramp!r}")
        self.warmup_steps, self.ramp_steps, self.ramp = warmup_steps, ramp_steps, ramp
        self.target_jsd = None if target_jsd is None else check_number(target_jsd, "target_jsd", strict=True)
        self.monitor = monitor
        self.gain = check_number(gain, "gain", strict=True)
        self.lam_min = check_number(lam_min, "lam_min", strict=True)
        self.lam_max = check_number(lam_max, "lam_max", strict=True)
        if self.lam_min > self.lam_max:
            raise ValueError(f"Expected `lam_min` <= `lam_max`, but got {lam_min} > {lam_max}")
        if self.target_jsd is not None and not self.lam_min <= self.lam <= self.lam_max:
            raise ValueError(f"Expected argument `lam` within [lam_min, lam_max] = [{lam_min}, {lam_max}] in target "
                             f"mode, but got {lam}")
        self.regularizer = regularizer
        self.base_lam = self.lam
        self.history: List[Dict[str, float]] = []
        self._target: Optional[FairnessRegularizer] = None

    def ramp_factor(self, step: int) -> float:
        """The ramp :math:`r(t)` in [0, 1] at optimiser step ``step``."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        u = min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)
        return u if self.ramp == "linear" else 0.5 * (1.0 - math.cos(math.pi * u))

    def lam_at(self, step: int) -> float:
        """λ at optimiser step ``step`` with the current base λ."""
        return self.ramp_factor(step) * self.base_lam

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning sets Trainer.callbacks in its callback connector; the Trainer class does not declare it
        regs = [c for c in trainer.callbacks if isinstance(c, FairnessRegularizer)]  # type: ignore[attr-defined]
        if self.regularizer is not None:
            regs = [c for c in regs if c.log_prefix == self.regularizer]
        if len(regs) != 1:
            which = f" with log_prefix {self.regularizer!r}" if self.regularizer is not None else ""
            raise ValueError(f"LambdaSchedule needs exactly one FairnessRegularizer{which} among the trainer's "
                             f"callbacks, but found {len(regs)}; set argument `regularizer` to its log_prefix")
        self._target = regs[0]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._target is not None:
            self._target.lam = self.lam_at(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.target_jsd is None or trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(f"LambdaSchedule's target mode reads `monitor`={self.monitor!r}, but it was not logged; "
                             f"logged: {sorted(trainer.callback_metrics)} (add a FairnessMonitor)")
        jsd = float(trainer.callback_metrics[self.monitor])
        step = trainer.global_step
        self.history.append({"step": float(step), "lam": self.base_lam, "jsd": jsd})
        if step < self.warmup_steps:  # the model was trained without penalty: nothing to learn about λ yet
            return
        ratio = max(jsd, 1e-12) / self.target_jsd
        self.base_lam = min(self.lam_max, max(self.lam_min, self.base_lam * ratio ** self.gain))

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lam": self.base_lam, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.base_lam = float(state_dict["base_lam"])
        self.history = [dict(h) for h in state_dict.get("history", [])]
