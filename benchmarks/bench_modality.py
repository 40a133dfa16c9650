"""Modality balance on a synthetic shortcut task, and the per-step overhead of the ModalityBalance callback.

    python benchmarks/bench_modality.py [--seeds 3] [--epochs 30] [--quick]

Data (built here): two modalities. ``A`` (the shortcut, 8-D) carries the label with probability 0.9 during training
(``a = s (2t - 1) + noise`` with ``t = y`` w.p. 0.9, else a coin flip); ``B`` (weaker but informative, 16-D)
determines the label through a noisy nonlinear rule (``cos(2 b_0) + cos(2 b_1) + b_2 b_3`` plus noise; the
noise-free rule is right 90.5% of the time) whose features a network learns slowly, so that joint training, which
fits the shortcut within a few steps, leaves B's encoder under-fitted: the imbalance these methods address (the
previous rule, ``sum tanh(b_0..3) + b_4 b_5 / 2``, was learned well by every method, and left them nothing to
fix: best gain +6 points, see the history paragraph in the README). Reported on fresh test
sets, for joint training and each method: in-distribution accuracy (shortcut as in training), shortcut-broken
accuracy (``t`` independent of ``y``), accuracy with each modality missing (zeroed), the weak modality's
linear-probe accuracy (logistic regression on the frozen B-encoder features), and the Shapley values of the two
modalities for the accuracy (zero baseline), as mean ± std over seeds.

Overhead: the same Lightning training loop with and without the ``ModalityBalance(OGMGE)`` callback, for two
models: the MLP widened to 512 (batch 256; the worst case, as a step costs about 6 x 256 flops per parameter while
the enhancement noise costs the same per parameter at any batch size) and a small CNN over 1x32x32 inputs (batch
64; the kind of encoder OGM-GE was made for). The figure for the target alternates steps with and without the
callback inside one run (median step times), since separate runs of one loop differ by several percent on a shared
machine; separate interleaved runs, with a no-op callback as control, are reported beside it (see ``overhead``). A
row each in ``benchmarks/results.csv``; the accuracy table goes to ``benchmarks/modality_shortcut.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fairret.modality import (AGM, OGMGE, BalGrad, MMPareto, ModalityBalancer, balgrad_backward,  # noqa: E402
                              linear_head_slices, mmpareto_backward, scale_grad, shapley_contributions)
from fairret.lightning.examples import shortcut_data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_rows  # noqa: E402

DA, DB, H = 8, 16, 32


def make_data(n: int, seed: int, shortcut_p: float = 0.9, broken: bool = False):
    return shortcut_data(n, seed, shortcut_p, broken)


class Model(torch.nn.Module):
    def __init__(self, width: int = H):
        super().__init__()
        self.enc_a = torch.nn.Sequential(torch.nn.Linear(DA, width), torch.nn.ReLU())
        self.enc_b = torch.nn.Sequential(torch.nn.Linear(DB, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                         torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * width, 2)
        self.uni_a = torch.nn.Linear(width, 2)  # unimodal heads (MMPareto, BalGrad)
        self.uni_b = torch.nn.Linear(width, 2)
        self.width = width

    def features(self, a, b):
        return self.enc_a(a), self.enc_b(b)

    def forward(self, a, b):
        fa, fb = self.features(a, b)
        return self.head(torch.cat([fa, fb], 1))


def train(method: str, seed: int, epochs: int, n: int = 4000, bs: int = 64) -> Model:
    torch.manual_seed(seed)
    model = Model()
    a, b, y = make_data(n, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # as in the papers: Adam would undo the scaling
    ce = torch.nn.functional.cross_entropy
    groups = {"a": list(model.enc_a.parameters()), "b": list(model.enc_b.parameters())}
    slices = {"a": [(model.head.weight, slice(0, H))], "b": [(model.head.weight, slice(H, 2 * H))]}
    bal = None
    if method == "OGM-GE":
        bal = ModalityBalancer(OGMGE(alpha=0.8), groups, slices, seed=seed)
    agm = AGM(alpha=0.5) if method == "AGM" else None
    k_agm = torch.ones(2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xa, xb, yy = a[idx], b[idx], y[idx]
            opt.zero_grad()
            if method in ("joint", "OGM-GE"):
                fa, fb = model.features(xa, xb)
                out = model.head(torch.cat([fa, fb], 1))
                if bal is not None:
                    bal.update(linear_head_slices(model.head, [fa, fb]), yy)
                ce(out, yy).backward()
                if bal is not None:
                    bal.apply()
            elif method == "AGM":
                def fuse(u, v):
                    return model.head(torch.cat(model.features(u, v), 1))

                empty, phis = shapley_contributions(fuse, [xa, xb])
                out = empty + scale_grad(phis[0], float(k_agm[0])) + scale_grad(phis[1], float(k_agm[1]))
                ce(out, yy).backward()
                agm.update([p.detach() for p in phis], yy)
                k_agm = agm.coefficients(0)
            elif method == "MMPareto":
                fa, fb = model.features(xa, xb)
                loss_mm = ce(model.head(torch.cat([fa, fb], 1)), yy)
                uni = {"a": ce(model.uni_a(fa), yy), "b": ce(model.uni_b(fb), yy)}
                shared = list(model.head.parameters()) + list(model.uni_a.parameters()) + list(model.uni_b.parameters())
                mmpareto_backward(MMPareto(), loss_mm, uni, groups, shared)
            elif method == "BalGrad":
                fa, fb = model.features(xa, xb)
                task = ce(model.head(torch.cat([fa, fb], 1)), yy) + ce(model.uni_a(fa), yy) + ce(model.uni_b(fb), yy)
                shared = list(model.head.parameters()) + list(model.uni_a.parameters()) + list(model.uni_b.parameters())
                balgrad_backward(BalGrad(kl_weight=1.0), task, [model.uni_a(fa), model.uni_b(fb)], yy, groups, shared)
            else:
                raise ValueError(method)
            opt.step()
    return model


def accuracy(model: Model, a, b, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(a, b).argmax(1) == y).float().mean().item()


def probe(model: Model, seed: int) -> float:
    """Linear probe of the frozen B-encoder: logistic regression trained on fresh data, tested on more."""
    a, b, y = make_data(4000, seed + 1000)
    at, bt, yt = make_data(4000, seed + 2000)
    with torch.no_grad():
        f, ft = model.enc_b(b), model.enc_b(bt)
    mu, sd = f.mean(0), f.std(0).clamp_min(1e-6)
    f, ft = (f - mu) / sd, (ft - mu) / sd
    lin = torch.nn.Linear(f.shape[1], 2)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(f), y) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return 100.0 * (lin(ft).argmax(1) == yt).float().mean().item()


def evaluate(model: Model, seed: int) -> Dict[str, float]:
    a, b, y = make_data(5000, seed + 500)
    ab, bb, yb = make_data(5000, seed + 600, broken=True)
    za, zb = torch.zeros_like(a), torch.zeros_like(b)
    full, no_a, no_b, none = accuracy(model, a, b, y), accuracy(model, za, b, y), accuracy(model, a, zb, y), \
        accuracy(model, za, zb, y)
    return {"in_dist": full, "broken": accuracy(model, ab, bb, yb), "missing_a": no_a, "missing_b": no_b,
            "probe_b": probe(model, seed), "shapley_a": 0.5 * (full - no_a + no_b - none),
            "shapley_b": 0.5 * (full - no_b + no_a - none)}


class ConvModel(torch.nn.Module):
    """Two small CNN encoders over 1x32x32 inputs (as OGM-GE's audio/visual ResNets, scaled down) and a linear
    fusion head: the convolutions reuse each weight across positions, so a step costs far more per parameter than
    in the MLP."""

    def __init__(self, width: int = 128):
        super().__init__()

        def enc():
            return torch.nn.Sequential(
                torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(64, width, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten())

        self.enc_a, self.enc_b = enc(), enc()
        self.head = torch.nn.Linear(2 * width, 2)
        self.width = width

    def forward(self, a, b):
        return self.head(torch.cat([self.enc_a(a), self.enc_b(b)], 1))


#: overhead settings: model factory, feature width per modality, batch size, inputs of one batch
OVERHEAD_MODELS = {
    "mlp": (lambda: Model(512), 512, 256),
    "conv": (lambda: ConvModel(128), 128, 64),
}


def overhead(steps: int, reps: int, kind: str = "mlp") -> Dict[str, float]:
    """Per-step cost of ModalityBalance(OGMGE) in a Lightning loop, for the MLP of the accuracy study widened to 512
    (batch 256: the worst case, a step costs little per parameter while the noise costs the same per parameter) or
    the small CNN (batch 64). Two measurements:

    * alternating steps (the figure for the target): one run whose odd steps go through the callback's hooks and
      whose even steps skip them (its head hook then returns at once), so that the steps with and without share the
      machine's state; overhead = median step time with / median without - 1. Lightning's dispatch of the three
      hooks is paid on both kinds of step, so it is left out (the no-op control below measures it);
    * separate runs: ``reps`` interleaved runs each of the loop without any callback, with a no-op callback (the
      hook dispatch) and with ModalityBalance; medians per run, the median of the per-repeat ratios against the run
      without. Between two runs of one loop the step time moves by several percent on a shared machine (the no-op
      row shows that floor).
    """
    import logging
    import warnings

    import lightning.pytorch as pl

    from fairret.lightning import ModalityBalance

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    make, width, bs = OVERHEAD_MODELS[kind]

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.m = make()

        def training_step(self, batch, idx):
            a, b, y = batch
            return torch.nn.functional.cross_entropy(self.m(a, b), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class StepClock(pl.Callback):
        """Wall time from one step's start to the next's (setup excluded); first in the callback list."""

        def __init__(self):
            self.starts = []

        def on_train_batch_start(self, *args):
            self.starts.append(time.perf_counter())

    class NoOp(pl.Callback):
        """The same three per-step hooks as ModalityBalance, doing nothing: the cost of Lightning's dispatch."""

        def on_train_batch_start(self, *args):
            pass

        def on_before_backward(self, *args):
            pass

        def on_before_optimizer_step(self, *args):
            pass

    class Alternate(pl.Callback):
        """Setup and teardown always; the per-step hooks of ``inner`` on odd batches only."""

        def __init__(self, inner):
            self.inner, self.on = inner, False

        def setup(self, trainer, pl_module, stage):
            self.inner.setup(trainer, pl_module, stage)

        def teardown(self, trainer, pl_module, stage):
            self.inner.teardown(trainer, pl_module, stage)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.on = batch_idx % 2 == 1
            if self.on:
                self.inner.on_train_batch_start(trainer, pl_module, batch, batch_idx)

        def on_before_backward(self, *args):
            if self.on:
                self.inner.on_before_backward(*args)

        def on_before_optimizer_step(self, *args):
            if self.on:
                self.inner.on_before_optimizer_step(*args)

    def balance():
        return ModalityBalance(OGMGE(alpha=0.5), encoders={"a": "m.enc_a", "b": "m.enc_b"}, head="m.head",
                               widths={"a": width, "b": width}, labels=2)

    n = bs * (2 * steps + 5)  # enough batches for the longest run; shorter runs stop early
    if kind == "mlp":
        a, b, y = make_data(n, 0)
    else:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, 1, 32, 32, generator=g), torch.randn(n, 1, 32, 32, generator=g)
        y = torch.randint(0, 2, (n,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b, y), batch_size=bs)

    def run(callbacks, n_steps):
        clock = StepClock()
        torch.manual_seed(0)
        t = pl.Trainer(max_epochs=1, limit_train_batches=n_steps + 1, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                       callbacks=[clock] + callbacks)
        t.fit(LM(), loader)
        return np.diff(clock.starts)  # step k's time, hooks of step k included

    # alternating steps in one run (the first 4 steps warm up)
    dt = run([Alternate(balance())], 2 * steps + 4)[4:]
    idx = np.arange(4, 4 + len(dt))
    with_alt, without_alt = np.median(dt[idx % 2 == 1]), np.median(dt[idx % 2 == 0])
    # separate runs, interleaved
    med: Dict[str, List[float]] = {"none": [], "noop": [], "balance": []}
    for _ in range(reps):
        for which, cbs in (("none", []), ("noop", [NoOp()]), ("balance", [balance()])):
            med[which].append(float(np.median(run(cbs, steps)[2:])))
    none = np.array(med["none"])
    return {"kind": kind, "batch": bs, "step_ms_without": 1e3 * without_alt, "step_ms_with": 1e3 * with_alt,
            "overhead_pct": 100.0 * (with_alt / without_alt - 1),
            "runs_ms_without": 1e3 * float(np.median(none)), "runs_ms_with": 1e3 * float(np.median(med["balance"])),
            "runs_overhead_pct": 100.0 * float(np.median(np.array(med["balance"]) / none - 1)),
            "runs_noop_pct": 100.0 * float(np.median(np.array(med["noop"]) / none - 1))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", default="joint,OGM-GE,AGM,MMPareto,BalGrad")
    ap.add_argument("--overhead-only", action="store_true", help="only the callback overhead (no accuracy table)")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    epochs = 5 if args.quick else args.epochs
    methods = [] if args.overhead_only else args.methods.split(",")
    results: Dict[str, List[Dict[str, float]]] = {}
    for method in methods:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            r = evaluate(train(method, seed, epochs), seed)
            results.setdefault(method, []).append(r)
            print(json.dumps({"method": method, "seed": seed, **{k: round(v, 2) for k, v in r.items()},
                              "s": round(time.perf_counter() - t0, 1)}), flush=True)
    keys = ["in_dist", "broken", "missing_a", "missing_b", "probe_b", "shapley_a", "shapley_b"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method, rs in results.items():
        cells = [f"{np.mean([r[k] for r in rs]):.1f} ± {np.std([r[k] for r in rs], ddof=1) if len(rs) > 1 else 0:.1f}"
                 for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    ovs = [overhead(steps=20 if args.quick else 100, reps=3 if args.quick else 5, kind=k) for k in ("mlp", "conv")]
    for ov in ovs:
        print(json.dumps(ov))
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    table = Path(args.csv).with_name("modality_shortcut.md")  # accuracies are not timings: their own file
    if methods:
        table.write_text(f"# bench_modality.py ({datetime.date.today().isoformat()}, {machine}, "
                         f"torch {torch.__version__}, {args.seeds} seeds, {epochs} epochs; accuracies in %)\n\n"
                         + "\n".join(lines) + "\n")
    import fairret

    rows = [{"date": datetime.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
             "version": fairret.__version__, "benchmark": "modality_overhead", "provider": "ModalityBalance(OGMGE)",
             "loss": "step time", "n": ov["batch"], "s": "MLP width 512" if ov["kind"] == "mlp" else "CNN 32-64-128",
             "dtype": "float32", "device": "cpu", "median_ms": round(ov["step_ms_with"], 3),
             "p20_ms": round(ov["step_ms_without"], 3),
             "error": f"overhead {ov['overhead_pct']:.1f}% alternating steps (p20_ms column: without the callback); "
                      f"separate runs {ov['runs_overhead_pct']:+.1f}%, no-op callback {ov['runs_noop_pct']:+.1f}%"}
            for ov in ovs]
    append_rows(Path(args.csv), rows)


if __name__ == "__main__":
    main()
