"""How much accuracy demographic parity (DP gap <= 1 point) leaves on Adult/sex, per model class.

    python benchmarks/adult_ceiling.py [--data-dir DIR] [--seeds 5] [--epochs 20] [--no-gbdt]

For the demo's MLP (one hidden layer of 64, Adam 1e-3, batch 1024, 20 epochs, the demo's standardised features
without sex and race; plain torch here, so it runs in seconds), each seed and the ensemble of all seeds, and, when
scikit-learn is installed, gradient-boosted trees (``HistGradientBoostingClassifier``) on the same features:

* the unconstrained test accuracy;
* the *oracle* ceiling: the best test accuracy of one threshold per sex with a test DP difference <= 1 (and <= 0.5)
  point, thresholds chosen on the test labels (:func:`fairret.postprocess.dp_accuracy_ceiling`): an upper bound for
  any post-processing of those scores for DP;
* honest post-processing: thresholds chosen on the training split (:func:`fairret.postprocess.group_thresholds`),
  applied to the test split (:func:`fairret.postprocess.apply_thresholds`; accuracy and DP difference, as the demo
  measures it: :func:`fairret.demo.rate_differences`).

Our Adult target (DP difference <= 1.0 at accuracy >= 83.3%, ``benchmarks/demo_targets.py``) is a question of this
ceiling. A table on stdout and in ``benchmarks/adult_ceiling.md``; rows in ``benchmarks/results.csv`` (figures in the
free-text column).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairret  # noqa: E402
from _results import append_rows  # noqa: E402
from fairret.datasets import load_adult  # noqa: E402
from fairret.demo import rate_differences  # noqa: E402
from fairret.postprocess import apply_thresholds, dp_accuracy_ceiling, group_thresholds  # noqa: E402


def train_mlp(X: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, hidden: int = 64, lr: float = 1e-3,
              batch: int = 1024) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(X[b]).squeeze(1), y[b]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("FAIRRET_DATA_DIR"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-gbdt", action="store_true", help="skip the gradient-boosted trees")
    ap.add_argument("--out", default=str(Path(__file__).with_name("adult_ceiling.md")))
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()

    ds = load_adult(args.data_dir)
    train = torch.from_numpy(ds.extra["split"] == "train")
    X, y = ds.features.float(), ds.label.float()
    sex = torch.from_numpy((ds.sensitive["sex"] == "Male").astype(np.int64))
    mu, sd = X[train].mean(0), X[train].std(0).clamp_min(1e-6)
    X = (X - mu) / sd
    parts = {name: (X[rows], y[rows], sex[rows]) for name, rows in (("train", train), ("test", ~train))}

    def scores_of(predict):
        return {name: torch.as_tensor(predict(Xs), dtype=torch.float64) for name, (Xs, _, _) in parts.items()}

    def evaluate(name: str, scores) -> dict:
        (_, y_tr, s_tr), (_, y_te, s_te) = parts["train"], parts["test"]
        p_te = scores["test"]
        hard = (apply_thresholds(p_te, s_te, group_thresholds(scores["train"], y_tr, s_tr)) > 0.5).double()
        return {"model": name, "acc": 100 * ((p_te > 0.5).double() == y_te).double().mean().item(),
                "oracle1": 100 * dp_accuracy_ceiling(p_te, y_te, s_te, 0.01)[0],
                "oracle05": 100 * dp_accuracy_ceiling(p_te, y_te, s_te, 0.005)[0],
                "honest": 100 * (hard == y_te).double().mean().item(),
                "honest_gap": rate_differences(hard, y_te, s_te)["dp_difference"]}

    results, mlp_scores = [], []
    for seed in range(args.seeds):
        model = train_mlp(parts["train"][0], parts["train"][1], seed, args.epochs)
        with torch.no_grad():
            sc = scores_of(lambda Xs: torch.sigmoid(model(Xs).squeeze(1)))
        mlp_scores.append(sc)
        results.append(evaluate(f"MLP 64, seed {seed}", sc))
        print(results[-1], flush=True)
    if args.seeds > 1:
        ens = {k: torch.stack([sc[k] for sc in mlp_scores]).mean(0) for k in parts}
        results.append(evaluate(f"MLP 64, ensemble of {args.seeds}", ens))
        print(results[-1], flush=True)
    if not args.no_gbdt:
        try:
            from sklearn.ensemble import HistGradientBoostingClassifier
        except ImportError:
            print("scikit-learn not installed: no gradient-boosted trees", flush=True)
        else:
            gb = HistGradientBoostingClassifier(random_state=0).fit(parts["train"][0].numpy(),
                                                                    parts["train"][1].numpy())
            results.append(evaluate("gradient-boosted trees (scikit-learn defaults)",
                                    scores_of(lambda Xs: gb.predict_proba(Xs.numpy())[:, 1])))
            print(results[-1], flush=True)

    lines = [f"# adult_ceiling.py ({datetime.date.today().isoformat()}, torch {torch.__version__}): Adult/sex, "
             f"{len(parts['train'][1])} train / {len(parts['test'][1])} test rows; accuracies in %, test split\n",
             "| model | unconstrained | oracle, DP ≤ 1 | oracle, DP ≤ 0.5 | training-split thresholds | "
             "their DP difference |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['acc']:.2f} | {r['oracle1']:.2f} | {r['oracle05']:.2f} | {r['honest']:.2f} | "
              f"{r['honest_gap']:.2f} |" for r in results]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    append_rows(Path(args.csv), [{
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "version": fairret.__version__, "benchmark": "adult_dp_ceiling",
        "provider": r["model"], "loss": "none (post-processing bounds)", "n": len(parts["test"][1]),
        "s": "Adult/sex test split", "dtype": "float32", "device": "cpu",
        "error": f"acc {r['acc']:.2f}; oracle DP<=1 {r['oracle1']:.2f}; oracle DP<=0.5 {r['oracle05']:.2f}; "
                 f"train thresholds {r['honest']:.2f} at DP {r['honest_gap']:.2f}"} for r in results])


if __name__ == "__main__":
    main()
