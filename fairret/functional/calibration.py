r"""Reporting and λ calibration for dependence penalties (Lee et al. 2025).

* :func:`intersectional_jsd`: generalised Jensen–Shannon divergence between the distributions of the predictions
  in the intersectional cells, :math:`JSD_\pi(P_1..P_G) = H(\sum_g \pi_g P_g) - \sum_g \pi_g H(P_g)` in bits
  (range :math:`[0, \log_2 G]`), each :math:`P_g` a Gaussian kernel density estimate on a regular grid over
  ``[min, max]`` of the predictions, normalised to sum 1 over the grid; :math:`\pi_g` the cell proportions
  (``weights="cell"``) or equal (``"equal"``). Predictions are first linearly binned onto the grid, so the cost is
  O(n + grid²) rather than O(n·grid).
* :func:`unfairness_ratio`: between-cell share of the prediction variance,
  :math:`\sum_g \pi_g (\bar y_g - \bar y)^2 / \mathrm{Var}(\hat y)` (0 when every cell has the same mean).
* :func:`calibrate_lambda`: sweep λ and seeds over a user training function and collect the validation JSD and
  loss, with the JSD-vs-λ and loss-vs-JSD plots used to pick λ at the knee.

Example:
    >>> import torch
    >>> cells = torch.tensor([0, 0, 1, 1] * 50)
    >>> same = torch.rand(200)
    >>> intersectional_jsd(same, torch.zeros(200, dtype=torch.long)).item()
    0.0
    >>> apart = cells.double() + 0.01 * torch.rand(200, dtype=torch.float64)
    >>> round(intersectional_jsd(apart, cells, bandwidth=0.01).item(), 3)
    1.0
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .._validation import check_finite, check_number, check_tensor

__all__ = ["intersectional_jsd", "unfairness_ratio", "calibrate_lambda"]


def _cells(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Cell ids ``(N,)`` from ids or a one-hot ``(N, G)`` matrix; an all-zero one-hot row is id -1 (no cell)."""
    if not isinstance(cells, torch.Tensor):
        cells = torch.as_tensor(cells)
    if cells.ndim not in (1, 2):
        raise ValueError(f"Expected argument `cells` to have shape (N,) or (N, G), but got {tuple(cells.shape)}")
    if cells.shape[0] != n:
        raise ValueError(f"Expected argument `cells` to have N={n} rows like `pred`, but got {cells.shape[0]}")
    if cells.ndim == 2:  # one-hot; rows without a cell are ignored like id -1
        if cells.shape[1] == 0:
            return torch.full((n,), -1, dtype=torch.long, device=cells.device)
        return torch.where((cells != 0).any(1), cells.argmax(1), torch.full_like(cells[:, 0], -1, dtype=torch.long))
    return cells.long()


def _in_cells(p: torch.Tensor, cells: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The predictions ``p`` ``(N,)`` of the rows in a cell (:func:`_cells`) and their cells renumbered
    ``0 .. G-1``."""
    c = _cells(cells, p.shape[0]).to(p.device)
    keep = c >= 0
    _, c = torch.unique(c[keep], return_inverse=True)
    return p[keep], c


def intersectional_jsd(pred: torch.Tensor, cells: torch.Tensor, *, bandwidth: float = 0.15, grid: int = 1000,
                       weights: str = "cell") -> torch.Tensor:
    """Generalised JSD (bits) between the per-cell KDEs of the predictions.

    Args:
        pred: ``(N,)`` or ``(N, 1)`` predictions.
        cells: ``(N,)`` cell ids (e.g. ``SensitiveAttributes.group_ids["race&sex"]``) or a one-hot ``(N, G)``;
            negative ids and all-zero one-hot rows are ignored.

    Raises:
        ValueError: non-finite ``pred`` (the value is a report, computed on the host anyway), mismatched rows,
            bad ``bandwidth``/``grid``/``weights``.
        bandwidth: Gaussian kernel bandwidth, in units of the predictions (0.15 as in Lee et al.).
        grid: number of grid points over ``[min, max]``.
        weights: ``cell`` (cell proportions) or ``equal``.
    """
    if weights not in ("cell", "equal"):
        raise ValueError(f"Expected argument `weights` to be 'cell' or 'equal', but got {weights!r}")
    check_number(bandwidth, "bandwidth", strict=True)
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 2:
        raise ValueError(f"Expected argument `grid` to be an int >= 2, but got {grid!r}")
    p = check_tensor(pred, "pred").detach().reshape(-1).to(torch.float64)
    check_finite(p, "pred")  # a report that reads its data anyway: NaN would index the grid out of range
    p, c = _in_cells(p, cells)
    g = int(c.max()) + 1 if c.numel() else 0
    if g <= 1:
        return torch.zeros((), dtype=torch.float64)
    lo, hi = p.min(), p.max()
    span = (hi - lo).clamp_min(1e-12)
    pos = (p - lo) / span * (grid - 1)
    left = pos.floor().clamp(0, grid - 2).long()
    frac = pos - left
    hist = torch.zeros(g, grid, dtype=torch.float64, device=p.device)
    hist.index_put_((c, left), 1 - frac, accumulate=True)
    hist.index_put_((c, left + 1), frac, accumulate=True)
    pts = torch.linspace(0, 1, grid, dtype=torch.float64, device=p.device) * span + lo
    kern = torch.exp(-0.5 * ((pts[:, None] - pts[None, :]) / bandwidth) ** 2)
    dens = hist @ kern  # (G, grid): KDE of each cell evaluated on the grid
    dens = dens / dens.sum(1, keepdim=True).clamp_min(1e-300)
    counts = torch.bincount(c, minlength=g).to(torch.float64)
    pi = counts / counts.sum() if weights == "cell" else torch.full((g,), 1.0 / g, dtype=torch.float64)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(torch.xlogy(q, q)).sum(-1) / math.log(2.0)

    mix = (pi[:, None] * dens).sum(0)
    return (entropy(mix) - (pi * entropy(dens)).sum()).clamp_min(0.0)


def unfairness_ratio(pred: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Between-cell share of the variance of the predictions (0 = equal cell means, 1 = all variance between)."""
    p = pred.detach().reshape(-1).to(torch.float64)
    p, c = _in_cells(p, cells)
    var = p.var(unbiased=False)
    if var <= 0:
        return torch.zeros((), dtype=torch.float64)
    counts = torch.bincount(c).to(torch.float64)
    means = torch.zeros_like(counts).index_add_(0, c, p) / counts
    between = (counts / counts.sum() * (means - p.mean()) ** 2).sum()
    return between / var


def calibrate_lambda(train_fn: Callable[[float, int], Dict[str, float]], lambdas: Sequence[float],
                     seeds: Sequence[int] = (0, 1, 2), *, plot: bool = True, ax: Optional[Any] = None
                     ) -> Dict[str, Any]:
    """Sweep λ and seeds; summarise the validation JSD and loss per λ, and plot the calibration curves.

    Args:
        train_fn: ``train_fn(lam, seed)`` trains a model with penalty weight ``lam`` and returns at least
            ``{"jsd": validation JSD, "loss": validation loss}`` (more keys are kept).
        lambdas: the λ grid (e.g. 0..150 as in Lee et al.).
        seeds: seeds per λ.
        plot: draw JSD-vs-λ and loss-vs-JSD (needs matplotlib).
        ax: two matplotlib axes to draw into.

    Returns:
        ``{"lambdas", "runs" (λ → list of dicts), "jsd_mean", "jsd_std", "loss_mean", "loss_std", "figure"}``.
    """
    if not lambdas or not seeds:
        raise ValueError("Expected non-empty `lambdas` and `seeds`")
    runs: Dict[float, list] = {}
    for lam in lambdas:
        runs[lam] = []
        for seed in seeds:
            res = dict(train_fn(float(lam), int(seed)))
            for key in ("jsd", "loss"):
                if key not in res:
                    raise ValueError(f"Expected `train_fn` to return a dict with key {key!r}, but got {sorted(res)}")
            runs[lam].append(res)
    out: Dict[str, Any] = {"lambdas": list(lambdas), "runs": runs}
    for key in ("jsd", "loss"):
        vals = [torch.tensor([float(r[key]) for r in runs[lam]], dtype=torch.float64) for lam in lambdas]
        out[f"{key}_mean"] = [float(v.mean()) for v in vals]
        out[f"{key}_std"] = [float(v.std(unbiased=False)) for v in vals]
    out["figure"] = None
    if plot:
        import matplotlib.pyplot as plt

        fig, axes = (ax[0].figure, ax) if ax is not None else plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].errorbar(out["lambdas"], out["jsd_mean"], yerr=out["jsd_std"], marker="o", capsize=3)
        axes[0].set_xlabel("λ")
        axes[0].set_ylabel("validation JSD (bits)")
        axes[1].errorbar(out["jsd_mean"], out["loss_mean"], xerr=out["jsd_std"], yerr=out["loss_std"], marker="o",
                         capsize=3)
        for lam, xj, yl in zip(out["lambdas"], out["jsd_mean"], out["loss_mean"]):
            axes[1].annotate(f"{lam:g}", (xj, yl), fontsize=7)
        axes[1].set_xlabel("validation JSD (bits)")
        axes[1].set_ylabel("validation loss")
        fig.tight_layout()
        out["figure"] = fig
    return out
