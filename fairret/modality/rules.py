r"""Modality-balance rules: each a small module with validated hyper-parameters and checkpointed running state.

Coefficient rules (a per-modality factor applied to gradients, see :mod:`fairret.modality.apply`):

* :class:`OGMGE` (Peng et al. 2022): scores :math:`s_m = \sum_i p_m(y_i)` of the unimodal logits, pooled over the
  micro-batches of an optimiser step; :math:`\rho_m = s_m / \bar s_{-m}` (the mean score of the other modalities;
  for two modalities :math:`s_a / s_v`); :math:`k_m = 1 - \tanh(\alpha \rho_m)` when :math:`\rho_m > 1`, else 1.
  With ``noise=True`` the generalisation enhancement adds :math:`\mathcal N(0, \mathrm{std}(g)^2)` to every
  gradient tensor of the modulated modalities during the modulation window ``[start_step, end_step)``.
* :class:`AGM` (Li et al. 2023): scores :math:`s_m` = mean cross-entropy of the Shapley contribution
  :math:`\varphi_m` (lower is stronger), their running means :math:`\bar s_m`;
  :math:`\rho_m = \exp(\bar s^{now}_{-m} - s_m)` and :math:`\bar\rho_m` from the running means,
  :math:`k_m = \exp(\alpha \min(\bar\rho_m - \rho_m, 10))`, applied to the gradient flowing through
  :math:`\varphi_m` (:func:`fairret.modality.apply.scale_grad`), so it works with early fusion.

Gradient-surgery rules (they need the separate gradients of several losses: manual optimisation):

* :class:`MMPareto` (Wei and Hu 2024): per encoder, the multimodal gradient :math:`g_{mm}` and its unimodal
  gradient :math:`g_m`; weights :math:`(\tfrac12, \tfrac12)` when their cosine is positive, else the min-norm
  (MGDA) weights; :math:`\hat g = 2(w_1 g_{mm} + w_2 g_m)`, per tensor rescaled up to the norm of
  :math:`g_{mm} + g_m` when smaller, times :math:`\gamma`. Zero gradients give zero, never NaN.
* :class:`BalGrad` (Kwon et al. 2025): a KL term pulls each modality's prediction toward the others', weighted
  by how little the modality contributes (:math:`w_m \propto 1 - c_m`, :math:`c_m` its share of the confidence
  scores); per encoder, a task gradient that conflicts with the KL gradient (:math:`g_T \cdot g_{kl} < 0`) is
  projected onto the KL gradient's normal plane before the two are added.

Example:
    >>> import torch
    >>> rule = OGMGE(alpha=0.5)
    >>> y = torch.tensor([0, 1, 1, 0])
    >>> strong = torch.tensor([[4., -4.], [-4., 4.], [-4., 4.], [4., -4.]])  # confident and right
    >>> weak = torch.zeros(4, 2)                                            # p = 1/2 everywhere
    >>> rule.update([strong, weak], y)
    >>> k = rule.coefficients(step=0)
    >>> round(k[0].item(), 4), k[1].item()
    (0.2385, 1.0)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .._validation import check_number
from .scores import class_probabilities, confidence_scores

__all__ = ["BalanceRule", "OGMGE", "AGM", "MMPareto", "BalGrad", "min_norm_weights"]


class BalanceRule(torch.nn.Module):
    """Base of the coefficient rules: ``update`` per micro-batch, ``coefficients`` once per optimiser step.

    The pooled statistics of the current step are the buffer ``stats`` (a sum, so that
    :meth:`fairret.modality.ModalityBalancer.apply` can all-reduce it across ranks before the coefficients are
    computed); running state across steps lives in other buffers and is checkpointed with ``state_dict``.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("stats", torch.zeros(0, dtype=torch.float64))

    def _accumulate(self, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        if self.stats.numel() != values.numel():
            self.stats = torch.zeros_like(values)
        self.stats = self.stats.to(values.device) + values

    def coefficients(self, step: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_step(self) -> None:
        """Clear the statistics of the step (done by :meth:`coefficients`)."""
        self.stats = torch.zeros_like(self.stats)


class OGMGE(BalanceRule):
    """On-the-fly gradient modulation with generalisation enhancement (see the module docstring).

    Args:
        alpha: modulation strength α > 0 (0.1-0.8 in the paper).
        noise: add the Gaussian enhancement noise to the modulated modalities' gradients.
        start_step, end_step: the modulation window in optimiser steps (``end_step=None``: no end).
    """

    def __init__(self, alpha: float = 0.5, noise: bool = True, start_step: int = 0, end_step: Optional[int] = None):
        super().__init__()
        self.alpha = check_number(alpha, "alpha", strict=True)
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"Expected argument `start_step` to be an int >= 0, but got {start_step!r}")
        if end_step is not None and (not isinstance(end_step, int) or end_step <= start_step):
            raise ValueError(f"Expected argument `end_step` to be None or an int > start_step, but got {end_step!r}")
        self.noise, self.start_step, self.end_step = bool(noise), start_step, end_step

    def update(self, unimodal_logits: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add a micro-batch: the unimodal logits ``[o_1, ..., o_M]`` and the targets."""
        if len(unimodal_logits) < 2:
            raise ValueError(f"Expected the logits of at least two modalities, but got {len(unimodal_logits)}")
        self._accumulate(torch.cat([confidence_scores(unimodal_logits, target), torch.ones(1, dtype=torch.float64,
                                    device=unimodal_logits[0].device)]))

    def in_window(self, step: int) -> bool:
        """Whether optimiser step ``step`` is inside the modulation window."""
        return step >= self.start_step and (self.end_step is None or step < self.end_step)

    def coefficients(self, step: int) -> torch.Tensor:
        """``k_m`` for the pooled statistics of this step (ones outside the window, or without statistics)."""
        if self.stats.numel() == 0:
            raise RuntimeError("OGMGE.coefficients called before any update() in this step")
        s = self.stats[:-1]
        self.reset_step()
        m = s.numel()
        if not self.in_window(step):
            return torch.ones(m, dtype=torch.float64, device=s.device)
        others = (s.sum() - s) / (m - 1)
        rho = s / others.clamp_min(1e-12)
        # written so that a NaN ratio (non-finite logits) gives a NaN coefficient, not 1
        return torch.where(rho <= 1, torch.ones_like(rho), 1 - torch.tanh(self.alpha * rho))


class AGM(BalanceRule):
    """Adaptive gradient modulation on Shapley contributions (see the module docstring).

    Args:
        alpha: modulation strength α > 0.
        momentum: weight of the newest step in the running means of the scores, in (0, 1].
    """

    def __init__(self, alpha: float = 1.0, momentum: float = 0.1):
        super().__init__()
        self.alpha = check_number(alpha, "alpha", strict=True)
        if not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"Expected argument `momentum` in (0, 1], but got {momentum!r}")
        self.momentum = float(momentum)
        self.register_buffer("running", torch.zeros(0, dtype=torch.float64))

    def update(self, contributions: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add a micro-batch: the Shapley contributions ``[φ_1, ..., φ_M]`` (logits) and the targets."""
        if len(contributions) < 2:
            raise ValueError(f"Expected the contributions of at least two modalities, but got {len(contributions)}")
        with torch.no_grad():
            ce = torch.stack([-class_probabilities(p.detach().double(), target).clamp_min(1e-12).log().sum()
                              for p in contributions])
        n = torch.tensor([float(target.shape[0])], dtype=torch.float64, device=ce.device)
        self._accumulate(torch.cat([ce, n]))

    def coefficients(self, step: int) -> torch.Tensor:
        """``k_m`` for the pooled statistics of this step.

        A step whose micro-batches held no rows has no scores: it is skipped (coefficients 1, running means
        unchanged). Scores that are not finite give non-finite coefficients for the step and leave the running
        means unchanged. Until a step defines them the running means are NaN.
        """
        if self.stats.numel() == 0:
            raise RuntimeError("AGM.coefficients called before any update() in this step")
        count = self.stats[-1]
        empty = ~(count > 0)
        s = self.stats[:-1] / torch.where(empty, torch.ones_like(count), count)
        self.reset_step()
        if self.running.numel() != s.numel():
            self.running = torch.full_like(s, float("nan"))
        running = self.running.to(s.device)
        known = ~torch.isnan(running)
        upd = torch.where(known, (1 - self.momentum) * running + self.momentum * s, s)
        self.running = torch.where(~empty & torch.isfinite(s), upd, running)  # tensor ops: no host sync
        m = s.numel()

        def rho(v: torch.Tensor) -> torch.Tensor:
            others = (v.sum() - v) / (m - 1)
            return torch.exp(others - v)

        k = torch.exp(self.alpha * torch.clamp(rho(self.running) - rho(s), max=10.0))
        return torch.where(empty, torch.ones_like(k), k)


def min_norm_weights(g1: torch.Tensor, g2: torch.Tensor) -> Tuple[float, float]:
    r"""The weights ``(w, 1 - w)`` minimising :math:`\lVert w g_1 + (1 - w) g_2 \rVert` over :math:`w \in [0, 1]`."""
    diff = g1 - g2
    den = float((diff * diff).sum())
    if den <= 0.0:
        return 0.5, 0.5
    w = float(((g2 - g1) * g2).sum()) / den
    w = min(1.0, max(0.0, w))
    return w, 1.0 - w


class MMPareto(torch.nn.Module):
    """Pareto combination of the multimodal and unimodal gradients of each encoder (see the module docstring).

    Args:
        gamma: the final scale γ (1.5 in the paper).
    """

    def __init__(self, gamma: float = 1.5):
        super().__init__()
        self.gamma = check_number(gamma, "gamma", strict=True)

    def combine(self, g_mm: Sequence[torch.Tensor], g_uni: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor],
                                                                                            Tuple[float, float]]:
        """The combined gradients of one encoder's tensors, and the weights used."""
        if len(g_mm) != len(g_uni):
            raise ValueError(f"Expected as many unimodal as multimodal gradient tensors, got {len(g_uni)} and "
                             f"{len(g_mm)}")
        f_mm = torch.cat([g.reshape(-1) for g in g_mm]).double()
        f_uni = torch.cat([g.reshape(-1) for g in g_uni]).double()
        denom = f_mm.norm() * f_uni.norm()
        cos = float((f_mm * f_uni).sum() / denom) if denom > 0 else 1.0
        w = (0.5, 0.5) if cos > 0 else min_norm_weights(f_mm, f_uni)
        out = []
        for a, b in zip(g_mm, g_uni):
            new = 2 * (w[0] * a + w[1] * b)
            total_norm, new_norm = (a + b).norm(), new.norm()
            if new_norm > 0 and total_norm > new_norm:
                new = new * (total_norm / new_norm)
            out.append(new * self.gamma)
        return out, w


class BalGrad(torch.nn.Module):
    """Contribution-weighted KL alignment between modalities with conflict projection (see the module docstring).

    Args:
        kl_weight: weight of the KL term (> 0).
        project: project a task gradient that conflicts with the KL gradient.
    """

    def __init__(self, kl_weight: float = 1.0, project: bool = True):
        super().__init__()
        self.kl_weight = check_number(kl_weight, "kl_weight", strict=True)
        self.project = bool(project)

    def kl_loss(self, unimodal_logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_m w_m \mathrm{KL}(\mathrm{sg}(\bar p_{-m}) \,\|\, p_m)` with :math:`w_m \propto 1 - c_m`
        (weights summing to 1), :math:`c_m` the modality's share of the confidence scores."""
        m = len(unimodal_logits)
        if m < 2:
            raise ValueError(f"Expected the logits of at least two modalities, but got {m}")
        scores = confidence_scores(unimodal_logits, target)
        share = scores / scores.sum().clamp_min(1e-12)
        w = (1 - share) / (1 - share).sum().clamp_min(1e-12)
        logp = [torch.log_softmax(o, dim=-1) if o.shape[-1] > 1 else
                torch.cat([torch.nn.functional.logsigmoid(-o), torch.nn.functional.logsigmoid(o)], dim=-1)
                for o in unimodal_logits]
        total = unimodal_logits[0].new_zeros(())
        for k in range(m):
            others = torch.stack([logp[j].detach().exp() for j in range(m) if j != k]).mean(0)
            kl = (others * (others.clamp_min(1e-12).log() - logp[k])).sum(-1).mean()
            total = total + w[k].to(total.dtype) * kl
        return self.kl_weight * total

    def combine(self, g_task: Sequence[torch.Tensor], g_kl: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], bool]:
        """One encoder's combined gradients ``g_T' + g_kl``, and whether the task gradient was projected."""
        f_t = torch.cat([g.reshape(-1) for g in g_task]).double()
        f_k = torch.cat([g.reshape(-1) for g in g_kl]).double()
        dot, nk = float((f_t * f_k).sum()), float((f_k * f_k).sum())
        projected = self.project and dot < 0 and nk > 0
        coef = dot / nk if projected else 0.0
        return [t - coef * k + k for t, k in zip(g_task, g_kl)], projected
