"""The main job: train a small network on real COMPAS data without and with fairret losses.

Run ``python -m fairret.demo`` (``--help`` for options). It predicts two-year recidivism on the ProPublica
COMPAS data (6,172 rows after the standard filter), protected attributes race (African-American, Caucasian,
Hispanic, Other; Asian and Native American, 42 people together, are merged into Other) and sex, on a fixed 70/30
split, and prints for each setting the test accuracy, the demographic-parity gap and the equal-opportunity gap
(largest difference between groups of the thresholded positive rate, resp. true positive rate, in points).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .datasets import load_compas
from .loss import KLProjectionLoss, NormLoss
from .sensitive import SensitiveEncoder
from .statistic import PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate, FalsePositiveRate

RACES = ("African-American", "Caucasian", "Hispanic")


def _group_gap(hard: torch.Tensor, mask_rows: torch.Tensor, groups: torch.Tensor) -> float:
    rates = []
    for g in groups.unique():
        sel = (groups == g) & mask_rows
        if sel.sum() > 0:
            rates.append(hard[sel].float().mean().item())
    return 100.0 * (max(rates) - min(rates)) if len(rates) > 1 else 0.0


def evaluate(logits: torch.Tensor, y: torch.Tensor, group_ids: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Accuracy, and DP / EO gaps (points) per protected attribute, at threshold 0.5."""
    hard = (logits.squeeze(1) > 0).float()
    out = {"acc": 100.0 * (hard == y).float().mean().item()}
    everyone = torch.ones_like(y, dtype=torch.bool)
    for name, ids in group_ids.items():
        out[f"dp_{name}"] = _group_gap(hard, everyone, ids)
        out[f"eo_{name}"] = _group_gap(hard, y == 1, ids)
    return out


def train(x: torch.Tensor, y: torch.Tensor, sens: torch.Tensor, penalty: Optional[Callable], lam: float, *,
          epochs: int, seed: int, batch_size: int = 256, lr: float = 3e-3) -> torch.nn.Module:
    """Train a 2-layer MLP with BCE plus ``lam * penalty(logits, sens, labels)`` per mini-batch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bce = torch.nn.BCEWithLogitsLoss()
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            logits = model(x[idx])
            loss = bce(logits.squeeze(1), y[idx])
            if penalty is not None and lam > 0:
                loss = loss + lam * penalty(logits, sens[idx], y[idx].unsqueeze(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


#: The compared settings: name, loss, whether it takes the label, and its weight. The weights were picked by a
#: small sweep on this split (the losses have different scales: a norm of relative gaps vs a mean divergence).
SETTINGS = (
    ("NormLoss(PositiveRate)", lambda: NormLoss(PositiveRate()), False, 0.15),
    ("KLProjection(PositiveRate)", lambda: KLProjectionLoss(PositiveRate()), False, 10.0),
    ("NormLoss(TruePositiveRate)", lambda: NormLoss(TruePositiveRate()), True, 0.2),
    ("KLProjection(TPR+FPR)", lambda: KLProjectionLoss(
        StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())), True, 10.0),
)


def settings(lam_scale: float = 1.0) -> Dict[str, tuple]:
    """Setting name → (penalty(logits, sens, label) or None, weight)."""
    out: Dict[str, tuple] = {"baseline (BCE only)": (None, 0.0)}
    for name, make, uses_label, lam in SETTINGS:
        loss = make()
        pen = (lambda lo, s, yy, L=loss: L(lo, s, yy)) if uses_label else (lambda lo, s, yy, L=loss: L(lo, s))
        out[f"{name} l={lam * lam_scale:g}"] = (pen, lam * lam_scale)
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m fairret.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="directory with compas/compas-scores-two-years.csv "
                        "(default: FAIRRET_DATA_DIR, then ../shared/data)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lam-scale", type=float, default=1.0, help="multiply every setting's loss weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsample", type=int, default=None, help="use only this many rows (quick checks)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    ds = load_compas(args.data_dir)
    race = np.where(np.isin(ds.sensitive["race"], RACES), ds.sensitive["race"], "Other")
    rng = np.random.default_rng(12345)
    order = rng.permutation(len(ds))
    if args.subsample:
        order = order[: args.subsample]
    cut = int(0.7 * len(order))
    tr, te = order[:cut], order[cut:]
    enc = SensitiveEncoder({"race": "categorical", "sex": "categorical"})
    cols = {"race": race, "sex": ds.sensitive["sex"]}
    enc.fit({k: v[tr] for k, v in cols.items()})
    s_tr = enc.transform({k: v[tr] for k, v in cols.items()})
    s_te = enc.transform({k: v[te] for k, v in cols.items()})
    x = ds.features
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    x_tr, y_tr, x_te, y_te = x[tr], ds.label[tr], x[te], ds.label[te]

    print(f"COMPAS: {len(tr)} train / {len(te)} test rows; groups: {', '.join(s_tr.column_names)}")
    header = f"{'setting':40s} {'acc':>6s} {'DP race':>8s} {'DP sex':>7s} {'EO race':>8s} {'EO sex':>7s}"
    print(header)
    print("-" * len(header))
    results = {}
    for name, (pen, lam) in settings(args.lam_scale).items():
        model = train(x_tr, y_tr, s_tr.matrix, pen, lam, epochs=args.epochs, seed=args.seed)
        with torch.no_grad():
            r = evaluate(model(x_te), y_te, {"race": s_te.group_ids["race"], "sex": s_te.group_ids["sex"]})
        results[name] = r
        print(f"{name:40s} {r['acc']:6.2f} {r['dp_race']:8.2f} {r['dp_sex']:7.2f} {r['eo_race']:8.2f} "
              f"{r['eo_sex']:7.2f}")
    print(f"(test split, threshold 0.5, gaps = max - min over groups in points; {time.perf_counter() - t0:.0f} s)")
    return results


if __name__ == "__main__":
    main()
