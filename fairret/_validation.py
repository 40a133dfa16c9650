"""Argument checks and input preparation shared by every family.

Messages follow one pattern: they name the argument, say what was expected and what was received, e.g.
"Expected argument `sens` to have N=128 rows like `pred`, but got 127". ``ValueError`` is raised for bad
values, ``TypeError`` for bad types.

Two kinds of checks:

* checks of metadata (types, dtypes, number of dimensions, row counts, argument values given at construction)
  always run: they read no tensor data and cost nothing on the device;
* checks of values (finite inputs; probabilities in [0, 1] for the projection losses with
  ``pred_as_logit=False``) read a reduction of the data back to the host: a device synchronisation per check and
  a graph break under ``torch.compile`` (``fullgraph=True`` then fails). They run only with
  ``validate_args=True``, an argument with **one default, False**, in every functional, loss and metric that
  has it (:mod:`fairret.functional.distance`, every loss in :mod:`fairret.loss`,
  :class:`~fairret.metric.LinearFractionalParity` and the dependence metrics). Turn it on while debugging or in
  evaluation code; leave it off in training loops. The distance metrics check once per epoch, in ``compute``.
  Under ``torch.compile`` they request a graph break whose message says so (``fullgraph=True`` fails with it).

The non-finite policy (every family):

* validation off: a NaN or infinite value in the predictions, labels, sensitive matrix or attributes gives a
  non-finite loss, statistic or metric value, never a finite wrong one (a NaN denominator is not an absent group,
  a NaN distance variance is not zero), with tensor operations only, so the no-host-sync guarantee holds;
  running averages (``momentum``, AGM) skip non-finite updates instead of keeping NaN forever;
* validation on: ``ValueError`` naming the argument, before anything is computed;
* degenerate but finite input has a documented finite value with finite gradients: an absent group contributes
  nothing, an empty batch gives 0 (and skips the running averages), a zero distance variance gives a dCor of 0,
  saturated probabilities are handled in log space (the chi-squared projection bounds them to
  [1e-12, 1 - 1e-12]), half-precision inputs are accumulated in float32 or float64;
* functions that read their data on the host anyway (the sensitive encoder, ``one_hot_groups``, the JSD report)
  raise ``ValueError`` for NaN whatever ``validate_args`` says.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

__all__ = [
    "check_tensor",
    "check_floating",
    "check_ndim",
    "check_same_rows",
    "check_finite",
    "check_range",
    "check_probability",
    "check_number",
    "prepare_pred",
    "prepare_sens",
    "to_probabilities",
]


def check_tensor(x: Any, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}")
    return x


def check_floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"Expected argument `{name}` to be a floating-point tensor, but got dtype {x.dtype}")
    return x


def check_ndim(x: torch.Tensor, name: str, allowed: tuple[int, ...], shape_hint: str) -> torch.Tensor:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``allowed``."""
    if x.ndim not in allowed:
        raise ValueError(f"Expected argument `{name}` to have shape {shape_hint}, but got {tuple(x.shape)}")
    return x


def check_same_rows(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """Raise ``ValueError`` unless ``x`` has as many rows as ``ref``."""
    if x.shape[0] != ref.shape[0]:
        raise ValueError(
            f"Expected argument `{name}` to have N={ref.shape[0]} rows like `{ref_name}`, but got {x.shape[0]}"
        )


#: Why value checks cannot be compiled: the message of the graph break they request under ``torch.compile``.
_COMPILE_MESSAGE = ("validate_args=True: fairret's value checks (finite inputs, probability ranges) read tensor "
                    "data on the host, which torch.compile(fullgraph=True) cannot trace. Use validate_args=False in "
                    "compiled code (non-finite input then gives a non-finite loss), or compile without fullgraph "
                    "(the checks then run eagerly between graphs).")


def _reads_values() -> None:
    """Mark a check that reads tensor values: under ``torch.compile`` an explicit graph break with a message
    saying so (``fullgraph=True`` then fails with that message instead of a data-dependent guard error; without
    ``fullgraph`` the check runs eagerly between graphs)."""
    if torch.compiler.is_compiling():
        torch._dynamo.graph_break(msg=_COMPILE_MESSAGE)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (synchronises with the device)."""
    _reads_values()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"Expected argument `{name}` to be finite, but it holds {n_bad} NaN or infinite values")


def check_range(x: torch.Tensor, name: str, low: float, high: float) -> None:
    """Raise ``ValueError`` unless every value of ``x`` lies in ``[low, high]`` (synchronises)."""
    if x.numel() == 0:
        return
    _reads_values()
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise ValueError(
            f"Expected argument `{name}` to lie in [{low}, {high}], but its values span [{lo:.6g}, {hi:.6g}]"
        )


def check_probability(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` holds probabilities."""
    check_range(x, name, 0.0, 1.0)


def check_number(value: Any, name: str, low: float = 0.0, strict: bool = False) -> float:
    """A finite real number ``>= low`` (``> low`` when ``strict``), returned as float; booleans are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"Expected argument `{name}` to be a finite number {'>' if strict else '>='} {low:g}, but got "
                         f"{value!r}")
    return float(value)


def prepare_pred(pred: torch.Tensor, name: str = "pred") -> torch.Tensor:
    """Check floating-point predictions of shape ``(N,)`` or ``(N, C)`` and return them as ``(N, C)``."""
    check_floating(pred, name)
    check_ndim(pred, name, (1, 2), "(N,) or (N, C)")
    return pred.unsqueeze(-1) if pred.ndim == 1 else pred


def prepare_sens(sens: Optional[torch.Tensor], pred: torch.Tensor) -> Optional[torch.Tensor]:
    """Check the sensitive matrix against ``(N, C)`` predictions and return it as ``(N, S)`` in pred's dtype."""
    if sens is None:
        return None
    check_tensor(sens, "sens")
    check_ndim(sens, "sens", (1, 2), "(N, S)")
    if sens.ndim == 1:
        sens = sens.unsqueeze(-1)
    check_same_rows(sens, "sens", pred, "pred")
    if sens.shape[1] == 0:
        raise ValueError(f"Expected argument `sens` to have at least one column (group), but got shape "
                         f"{tuple(sens.shape)}")
    return sens.to(pred.dtype)


def to_probabilities(pred: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: the sigmoid of ``(N,)`` or ``(N, 1)`` logits, the softmax over the columns of
    ``(N, C)`` ones (``C > 1``). Every loss with ``pred_as_logit=True`` and the Lightning monitor use this rule.

    Example:
        >>> import torch
        >>> to_probabilities(torch.tensor([[0.0], [2.0]]))
        tensor([[0.5000],
                [0.8808]])
        >>> to_probabilities(torch.zeros(1, 4))
        tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    if pred.ndim == 2 and pred.shape[1] > 1:
        return torch.softmax(pred, dim=1)
    return torch.sigmoid(pred)
