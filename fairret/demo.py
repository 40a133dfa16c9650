"""The main job: how much bias each fairret regularizer removes on real data, and what it costs.

``python -m fairret.demo`` trains a small MLP (``fairret.lightning.examples.TabularClassifier``) on COMPAS and on
Adult, without and with each fairness loss over a grid of weights λ and several seeds, through the Lightning
callback :class:`~fairret.lightning.FairnessRegularizer` (the model has no fairness code), then evaluates every run
on the held-out test split and writes to ``--out`` (default ``fairret-demo/``):

* ``runs.csv``: one row per (data set, setting, λ, seed) with every metric and the run's training time
  (``trainer.fit``, seconds);
* ``summary.md``: per data set a table of means ± standard deviations over seeds (accuracy, AUC, demographic-parity
  and equalised-odds differences, intersectional JSD, dCor², seconds per run), then what the runs show: the
  accuracy-fairness front, the most accurate setting within a DP difference (``--max-gap``), the fairest within an
  accuracy loss (``--max-accuracy-loss``), the comparison with post-processing and with DiffDP, and what each
  setting costs in accuracy and training time; the same for the regression study;
* ``pareto_<data>.png``: accuracy against each fairness measure, one curve per loss over its λ grid (means over
  seeds);
* ``calibration.png``: test JSD against λ for the dependence losses (the calibration curve of Lee et al. 2025);
* ``regression.png``: for a regression target (COMPAS decile score), RMSE against dCor² and JSD.

Data: COMPAS (ProPublica filter, 6,172 rows, fixed 70/30 split; groups race × sex with Asian and Native American
merged into Other; attributes sex, race, age) and Adult (rows with missing values dropped, 30,162 train / 15,060
test; groups sex; attributes sex, race, age). Measures, on the test split: accuracy, the DP difference (the largest
difference of positive rates between two groups) and the EO difference (the larger of the largest true- and
false-positive-rate differences), in points, on predictions thresholded at 0.5, all from one
:func:`fairret.report.fairness_report` per run (:func:`group_report`); the JSD (bits) is between
the distributions of predicted probabilities in the race × sex cells; dCor² is between the probabilities and the
attributes (sex, race one-hot, age), on a fixed random subset of 3,000 test rows.

The default (quick) mode takes a few minutes on two CPU cores; ``--full`` runs more seeds, epochs and λ values.
``DiffDP`` (the difference of mean predicted probability between groups, as in the FFB benchmark) is trained in the
same run as a non-fairret baseline. On Adult, ``group thresholds`` post-processes the unconstrained model
(:func:`fairret.postprocess.group_thresholds`: one threshold per sex, chosen on the training split to give both the
same positive rate at the best training accuracy): the reference an in-processing penalty has to beat.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._extras import require_extra
from ._progress import progress_bar
from .metric import gap_max_min
from .postprocess import apply_thresholds, group_thresholds
from .report import FairnessReport, ReportWarning, fairness_report
from .sensitive import one_hot_groups
from .statistic import PositiveRate

__all__ = ["Setting", "settings_for", "run_one", "evaluate_classifier", "evaluate_regressor", "rate_differences",
           "group_report", "findings", "main"]


# --- what is compared -----------------------------------------------------------------------------------------------
def diffdp(pred: torch.Tensor, sens: torch.Tensor, pred_as_logit: bool = True) -> torch.Tensor:
    """DiffDP (the FFB benchmark's penalty): the largest difference of mean predicted probability between two of the
    groups present in the batch (columns of ``sens``): :func:`~fairret.metric.gap_max_min` of the
    :class:`~fairret.statistic.PositiveRate` of the probabilities."""
    sums = PositiveRate().sums(torch.sigmoid(pred) if pred_as_logit else pred, sens)
    return gap_max_min(sums.group_values()[sums.valid])


@dataclass
class Setting:
    """One compared configuration: a loss factory, its λ grid, and the batch entries it reads."""

    name: str
    family: str  # baseline / postprocess / diffdp / linear-fractional / dependence
    make: Optional[Callable[[], Any]]
    lams: Sequence[float]
    sens: Any = "sens"
    labels: Optional[str] = None
    extra_lams: Sequence[float] = field(default_factory=tuple)  # added in --full


def settings_for(dataset: str, task: str = "classification") -> List[Setting]:
    """The compared settings (weights chosen by a coarse sweep; the losses have different scales)."""
    from .loss import CCdCovLoss, DistanceCovarianceLoss, JdCovLoss, KLProjectionLoss, NormLoss
    from .statistic import EqualizedOdds, PositiveRate

    attrs = ["sex", "race", "age"]
    if task == "regression":
        def dep(cls, **kw):
            return lambda: cls(**kw)
        return [
            Setting("baseline (MSE)", "baseline", None, [0.0]),
            Setting("dCov", "dependence", dep(DistanceCovarianceLoss), [0.3, 1.0], extra_lams=(3.0,)),
            Setting("CCdCov", "dependence", dep(CCdCovLoss), [1.0, 3.0], sens=attrs, extra_lams=(10.0,)),
            Setting("JdCov", "dependence", dep(JdCovLoss), [1.0, 3.0], sens=attrs, extra_lams=(10.0,)),
        ]
    adult = dataset == "adult"
    out = [
        Setting("baseline (BCE)", "baseline", None, [0.0]),
        Setting("DiffDP (FFB)", "diffdp", lambda: diffdp, [1.0, 2.0] if adult else [0.5, 1.0],
                extra_lams=(0.5, 4.0) if adult else (2.0, 4.0)),
        Setting("NormLoss DP", "linear-fractional", lambda: NormLoss(PositiveRate()),
                [0.2, 0.3, 0.5] if adult else [0.05, 0.1], extra_lams=(0.1, 1.0) if adult else (0.03, 0.2)),
        Setting("KLProjection DP", "linear-fractional", lambda: KLProjectionLoss(PositiveRate()),
                [10.0, 30.0] if adult else [3.0, 10.0], extra_lams=(3.0, 100.0) if adult else (30.0,)),
    ]
    if dataset == "compas":
        out += [
            Setting("NormLoss EO", "linear-fractional", lambda: NormLoss(EqualizedOdds()), [0.05, 0.1],
                    labels="y", extra_lams=(0.03, 0.2)),
            Setting("dCov", "dependence", lambda: DistanceCovarianceLoss(), [3.0, 10.0], extra_lams=(30.0,)),
            # CCdCov on race and sex (the cells of the JSD); JdCov also on age, a continuous attribute
            Setting("CCdCov", "dependence", lambda: CCdCovLoss(), [3.0, 5.0, 10.0], sens=["sex", "race"],
                    extra_lams=(2.0, 20.0, 30.0)),
            Setting("JdCov (sex, race, age)", "dependence", lambda: JdCovLoss(), [3.0, 10.0], sens=attrs,
                    extra_lams=(30.0,)),
        ]
    else:
        out += [
            Setting("group thresholds (post-processing)", "postprocess", None, [0.0]),
            Setting("NormLoss EO", "linear-fractional", lambda: NormLoss(EqualizedOdds()), [0.2],
                    labels="y", extra_lams=(0.1, 0.4)),
            Setting("CCdCov", "dependence", lambda: CCdCovLoss(), [30.0], sens=attrs, extra_lams=(10.0, 100.0)),
        ]
    return out


DATASETS = {
    # data set -> (groups of the DP/EO gaps and of the LF losses' sens, training epochs quick/full, batch size,
    #              sex and race among the model's inputs)
    # COMPAS gives the model race and sex (0/1 columns): the unconstrained model then uses them directly (test JSD
    # 0.083 instead of 0.055 without them) and CCdCov removes that use at a better absolute operating point
    # (measured, 3 and 5 seeds: lower JSD at higher accuracy than without them). On Adult they moved no loss's
    # frontier past DP <= 1 at better accuracy, so Adult keeps the usual feature set.
    "compas": (("race", "sex"), (20, 40), 256, True),
    "adult": (("sex",), (20, 40), 1024, False),
}


# --- one run (in a worker process) ------------------------------------------------------------------------------------
_DM_CACHE: Dict[Tuple, Any] = {}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _datamodule(dataset: str, data_dir: Optional[str], subsample: Optional[int], task: str):
    from .lightning.examples import TabularDataModule

    key = (dataset, data_dir, subsample, task)
    if key not in _DM_CACHE:
        groups, _, bs, with_sens = DATASETS[dataset]
        dm = TabularDataModule(dataset, data_dir, groups=groups, batch_size=bs, val_fraction=0.0, test_fraction=0.3,
                               subsample=subsample, seed=0, target="decile_score" if task == "regression" else "label",
                               sensitive_features=with_sens)
        dm.setup("fit")
        # JSD cells: race x sex on both data sets (the LF groups of Adult are sex only)
        _DM_CACHE[key] = (dm, _cells(dm))
    return _DM_CACHE[key]


def _cells(dm) -> torch.Tensor:
    if dm.groups == ("race", "sex"):
        return dm.splits["test"].tensors["cells"]
    t = dm.splits["test"].tensors
    race = t["race"].argmax(1)
    sex = t["sex"].argmax(1)
    return race * t["sex"].shape[1] + sex


def _auc(prob: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve (torchmetrics; ties count half)."""
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(prob, y.long()))


def group_report(prob: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> FairnessReport:
    """The :func:`~fairret.report.fairness_report` of probabilities (or 0/1 decisions) ``prob`` with labels ``y``
    over the groups of ``groups`` (``(N,)`` ids >= 0; a negative id is in no group: counted in the overall figures
    only), thresholded at 0.5, every group with a row compared, no bootstrap; its notes (empty groups, undefined
    rates) are not issued as warnings."""
    n_groups = max(int(groups.max()) + 1 if groups.numel() else 1, 2)  # a second, empty column keeps it a matrix
    sens = one_hot_groups(groups.clamp_min(-1), n_groups, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        return fairness_report(prob, y, sens, threshold=0.5, pred_as_logit=False, min_group_size=1, n_boot=0)


def _differences(report: FairnessReport) -> Dict[str, float]:
    """The DP and EO differences of a :func:`group_report`, in points (NaN where fewer than two groups have the
    rate defined; the EO difference is the larger of the defined TPR and FPR differences)."""
    tpr, fpr = (report.gap("group", s).difference for s in ("tpr", "fpr"))
    defined = [d for d in (tpr, fpr) if not math.isnan(d)]
    return {"dp_difference": 100.0 * report.gap("group", "positive_rate").difference,
            "eo_difference": 100.0 * max(defined) if defined else float("nan")}


def rate_differences(hard: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> Dict[str, float]:
    """The demographic-parity and equalised-odds differences of 0/1 predictions, in points: the largest difference
    between two groups of the positive rate, and the larger of those of the true- and false-positive rates, as
    :func:`~fairret.report.fairness_report` gives them (:func:`group_report`; a group without rows, or without
    positives or negatives for a rate, is left out of that rate; NaN when fewer than two groups remain).

    Args:
        hard: ``(N,)`` predictions in {0, 1}.
        y: ``(N,)`` labels in {0, 1}.
        groups: ``(N,)`` group id of each row (>= 0; a negative id is in no group).

    Example:
        >>> hard, y = torch.tensor([1., 0, 1, 1]), torch.tensor([1., 0, 0, 1])
        >>> rate_differences(hard, y, torch.tensor([0, 0, 1, 1]))  # positive rates 1/2, 1; FPR 0, 1
        {'dp_difference': 50.0, 'eo_difference': 100.0}
    """
    return _differences(group_report(hard, y, groups))


def evaluate_classifier(prob: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, cells: torch.Tensor,
                        attrs: torch.Tensor) -> Dict[str, float]:
    """Test metrics of probabilities ``prob`` (N,): accuracy and the DP and EO differences (points, from one
    :func:`group_report`: decisions ``prob > 0.5``), AUC, JSD, dCor²."""
    from .functional.calibration import intersectional_jsd

    report = group_report(prob, y, groups)
    return {
        "acc": 100.0 * report.overall["accuracy"],
        "auc": 100.0 * _auc(prob, y),
        **_differences(report),
        "jsd": intersectional_jsd(prob.double(), cells).item(),
        "dcor": _dcor(prob, attrs),
    }


#: dCor² is evaluated on a fixed random subset of this many test rows (the whole split when smaller): an exact
#: O(n²) statistic against 8 attribute columns costs seconds per run at Adult's 15,060 rows on one core.
DCOR_ROWS = 3000


def _dcor(pred: torch.Tensor, attrs: torch.Tensor) -> float:
    from .functional.distance import distance_correlation_sqr

    n = pred.shape[0]
    if n > DCOR_ROWS:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:DCOR_ROWS]
        pred, attrs = pred[keep], attrs[keep]
    return distance_correlation_sqr(pred.double().reshape(-1, 1), attrs.double()).item()


def evaluate_regressor(pred: torch.Tensor, y: torch.Tensor, cells: torch.Tensor,
                       attrs: torch.Tensor) -> Dict[str, float]:
    """Test metrics of a regression: RMSE, R², JSD across cells, dCor², between-cell variance share."""
    from .functional.calibration import intersectional_jsd, unfairness_ratio

    err = pred - y
    return {
        "rmse": err.pow(2).mean().sqrt().item(),
        "r2": 1.0 - (err.pow(2).mean() / y.var(unbiased=False)).item(),
        "jsd": intersectional_jsd(pred.double(), cells).item(),
        "dcor": _dcor(pred, attrs),
        "between_share": unfairness_ratio(pred.double(), cells).item(),
    }


def run_one(job: Dict[str, Any]) -> Dict[str, Any]:
    """Train one model (Lightning, with the FairnessRegularizer for a penalised setting) and evaluate it."""
    import lightning.pytorch as pl

    from .lightning import FairnessRegularizer
    from .lightning.examples import TabularClassifier, TabularRegressor

    _quiet()  # after the import: importing lightning sets its loggers' level (the first run of a worker printed)

    torch.set_num_threads(1)
    dataset, task = job["dataset"], job["task"]
    dm, cells = _datamodule(dataset, job["data_dir"], job["subsample"], task)
    dm.shuffle_seed = job["seed"]
    setting = next(s for s in settings_for(dataset, task) if s.name == job["setting"])
    pl.seed_everything(job["seed"])  # its log line is silenced by _quiet (verbose= needs a newer lightning)
    cls = TabularRegressor if task == "regression" else TabularClassifier
    model = cls(num_features=dm.num_features, hidden=(64,), lr=1e-3)
    callbacks: List[pl.Callback] = []
    if setting.make is not None:
        callbacks.append(FairnessRegularizer(setting.make(), lam=job["lam"], sens=setting.sens,
                                             labels=setting.labels, pred_as_logit=task != "regression"))
    trainer = pl.Trainer(max_epochs=job["epochs"], accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - t0
    test = dm.splits["test"].tensors
    model.eval()
    with torch.no_grad():
        out = model(test["x"]).squeeze(1)
    attrs = torch.cat([test["sex"], test["race"], test["age"]], dim=1)
    if task == "regression":
        metrics = evaluate_regressor(out, test["y"], cells, attrs)
    else:
        groups = _gap_groups(dm, test)
        prob = torch.sigmoid(out)
        if setting.family == "postprocess":
            prob = _post_process(model, dm, prob, groups)
        metrics = evaluate_classifier(prob, test["y"], groups, cells, attrs)
    return {**{k: job[k] for k in ("dataset", "task", "setting", "lam", "seed")},
            "family": setting.family, **metrics, "seconds": seconds}


def _gap_groups(dm, tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The groups of the DP/EO gaps for a split's tensors: race x sex cells on COMPAS, sex on Adult."""
    return tensors["cells"] if dm.groups == ("race", "sex") else tensors["sex"].argmax(1)


def _post_process(model, dm, prob: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Test probabilities post-processed with the group thresholds of the training split
    (:func:`~fairret.postprocess.group_thresholds`, :func:`~fairret.postprocess.apply_thresholds`)."""
    train = dm.splits["train"].tensors
    with torch.no_grad():
        p_train = torch.sigmoid(model(train["x"]).squeeze(1))
    return apply_thresholds(prob, groups, group_thresholds(p_train, train["y"], _gap_groups(dm, train)))


# --- summaries ----------------------------------------------------------------------------------------------------------
def _group(rows: List[Dict[str, Any]], keys: Sequence[str]) -> Dict[Tuple, List[Dict[str, Any]]]:
    out: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def aggregate(rows: List[Dict[str, Any]], metrics: Sequence[str]) -> List[Dict[str, Any]]:
    """Mean and standard deviation over seeds per (data set, task, setting, λ), in run order."""
    out = []
    for (ds, task, name, lam), rs in _group(rows, ("dataset", "task", "setting", "lam")).items():
        agg = {"dataset": ds, "task": task, "setting": name, "lam": lam, "family": rs[0]["family"], "seeds": len(rs)}
        for m in metrics:
            v = np.array([r[m] for r in rs], dtype=float)
            agg[m], agg[m + "_sd"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(agg)
    return out


CLS_METRICS = ("acc", "auc", "dp_difference", "eo_difference", "jsd", "dcor", "seconds")
REG_METRICS = ("rmse", "r2", "jsd", "dcor", "between_share", "seconds")
#: column headers of the summary tables
HEADERS = {"acc": "acc (%)", "auc": "AUC (%)", "dp_difference": "DP difference", "eo_difference": "EO difference",
           "jsd": "JSD (bits)", "dcor": "dCor²", "seconds": "s/run", "rmse": "RMSE", "r2": "R²",
           "between_share": "between-cell share"}


def _table(aggs: List[Dict[str, Any]], metrics: Sequence[str], fmt: Dict[str, str]) -> str:
    head = "| setting | λ | " + " | ".join(HEADERS[m] for m in metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for a in aggs:
        cells = [f"{a[m]:{fmt[m]}} ± {a[m + '_sd']:{fmt[m]}}" for m in metrics]
        lines.append(f"| {a['setting']} | {a['lam']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FMT = {"acc": ".2f", "auc": ".2f", "dp_difference": ".2f", "eo_difference": ".2f", "jsd": ".4f", "dcor": ".4f",
       "rmse": ".3f", "r2": ".3f", "between_share": ".4f", "seconds": ".1f"}

#: families trained with a penalty (the baseline and post-processing are not)
PENALISED = ("diffdp", "linear-fractional", "dependence")


def _name(a: Dict[str, Any]) -> str:
    return a["setting"] if a["family"] in ("baseline", "postprocess") else f"{a['setting']} λ={a['lam']:g}"


def front(aggs: List[Dict[str, Any]], measure: str) -> List[Dict[str, Any]]:
    """The settings no other setting beats on both accuracy (higher) and ``measure`` (lower), by ``measure``."""
    def beaten(a):
        return any(b["acc"] >= a["acc"] and b[measure] <= a[measure]
                   and (b["acc"], b[measure]) != (a["acc"], a[measure]) for b in aggs)
    return sorted((a for a in aggs if not beaten(a)), key=lambda a: a[measure])


def _pct(new: float, old: float, digits: int = 0) -> str:
    return f"{100.0 * (new / old - 1):+.{digits}f}%" if old else "n/a"


def _classification_findings(rows: List[Dict[str, Any]], max_gap: float, max_acc_loss: float) -> List[str]:
    base = next((a for a in rows if a["family"] == "baseline"), None)
    if base is None:
        return []
    acc0, dp0, jsd0 = base["acc"], base["dp_difference"], base["jsd"]
    trained = [a for a in rows if a["family"] in PENALISED]
    out = [f"- Unconstrained model: {acc0:.2f}% accuracy, DP difference {dp0:.2f} points, EO difference "
           f"{base['eo_difference']:.2f}, JSD {jsd0:.4f} bits."]
    out.append("- Accuracy against the DP difference, the front (no other setting is both more accurate and has a "
               "smaller difference): " + "; ".join(f"{_name(a)} {a['acc']:.2f}% at {a['dp_difference']:.2f}"
                                                   for a in front(rows, "dp_difference")) + ".")
    within = [a for a in trained if a["dp_difference"] <= max_gap]
    if within:
        a = max(within, key=lambda a: a["acc"])
        out.append(f"- Most accurate penalty with a DP difference ≤ {max_gap:g}: {_name(a)}, {a['acc']:.2f}% at "
                   f"{a['dp_difference']:.2f} (accuracy {a['acc'] - acc0:+.2f} points against the unconstrained "
                   f"model).")
    elif trained:
        a = min(trained, key=lambda a: a["dp_difference"])
        out.append(f"- No penalty reaches a DP difference ≤ {max_gap:g}; the smallest: {_name(a)}, "
                   f"{a['dp_difference']:.2f} at {a['acc']:.2f}%.")
    budget = [a for a in trained if a["acc"] >= acc0 - max_acc_loss]
    if budget:
        a = min(budget, key=lambda a: a["jsd"])
        out.append(f"- Lowest JSD within {max_acc_loss:g} points of the unconstrained accuracy: {_name(a)}, JSD "
                   f"{jsd0:.4f} → {a['jsd']:.4f} ({_pct(a['jsd'], jsd0)}) at {a['acc']:.2f}% "
                   f"({a['acc'] - acc0:+.2f} points).")
    for post in (a for a in rows if a["family"] == "postprocess"):
        line = (f"- {post['setting']} on the unconstrained model (it needs each row's group at prediction time): "
                f"{post['acc']:.2f}% at DP difference {post['dp_difference']:.2f}. ")
        fairer = [a for a in trained if a["dp_difference"] <= post["dp_difference"]]
        if fairer:
            a = max(fairer, key=lambda a: a["acc"])
            line += (f"The most accurate penalty with a difference no larger: {_name(a)}, {a['acc']:.2f}% at "
                     f"{a['dp_difference']:.2f} ({a['acc'] - post['acc']:+.2f} points).")
        else:
            line += "No penalty reaches a difference that small."
        out.append(line)
    diff = sorted((a for a in trained if a["family"] == "diffdp"), key=lambda a: a["lam"])
    ours = [a for a in trained if a["family"] != "diffdp"]
    if diff and ours:
        parts = []
        for d in diff:
            fairer = [a for a in ours if a["dp_difference"] <= d["dp_difference"]]
            if fairer:
                a = max(fairer, key=lambda a: a["acc"])
                parts.append(f"λ={d['lam']:g} ({d['acc']:.2f}% at {d['dp_difference']:.2f}): {_name(a)} "
                             f"{a['acc']:.2f}% at {a['dp_difference']:.2f} ({a['acc'] - d['acc']:+.2f} points)")
            else:
                parts.append(f"λ={d['lam']:g} ({d['acc']:.2f}% at {d['dp_difference']:.2f}): no fairret loss with "
                             f"a difference that small")
        out.append("- Against DiffDP, the most accurate fairret loss with a DP difference no larger than each DiffDP "
                   "point's: " + "; ".join(parts) + ".")
    out += _time_costs(rows, base)
    return out


def _time_costs(rows: List[Dict[str, Any]], base: Dict[str, Any]) -> List[str]:
    """Training time per run of each penalised setting (mean over its λ) relative to the unconstrained model's."""
    times: Dict[str, List[float]] = {}
    for a in rows:
        if a["family"] in PENALISED:
            times.setdefault(a["setting"], []).append(a["seconds"])
    if not times or not base["seconds"]:
        return []
    return [f"- Training time per run (trainer.fit): unconstrained {base['seconds']:.1f} s; with a penalty "
            + ", ".join(f"{name} ×{np.mean(t) / base['seconds']:.2f}" for name, t in times.items())
            + " (wall-clock, parallel workers: rough)."]


def _regression_findings(rows: List[Dict[str, Any]]) -> List[str]:
    base = next((a for a in rows if a["family"] == "baseline"), None)
    if base is None:
        return []
    out = [f"- Unconstrained model: RMSE {base['rmse']:.3f}, dCor² {base['dcor']:.4f}, JSD {base['jsd']:.4f} bits."]
    for a in rows:
        if a["family"] in PENALISED:
            out.append(f"- {_name(a)}: dCor² {_pct(a['dcor'], base['dcor'])}, JSD {_pct(a['jsd'], base['jsd'])}, "
                       f"RMSE {base['rmse']:.3f} → {a['rmse']:.3f} ({_pct(a['rmse'], base['rmse'], 1)}).")
    return out + _time_costs(rows, base)


def findings(aggs: List[Dict[str, Any]], max_gap: float = 1.0, max_acc_loss: float = 2.0) -> Dict[str, List[str]]:
    """What the aggregated runs show, as sentences per data set (and ``"regression"``): the accuracy-DP front, the
    most accurate penalty within a DP difference of ``max_gap`` points, the lowest JSD within ``max_acc_loss``
    points of the unconstrained accuracy, post-processing and DiffDP against the fairret losses, and the training
    time of each penalty."""
    out: Dict[str, List[str]] = {}
    for ds in dict.fromkeys(a["dataset"] for a in aggs if a["task"] == "classification"):
        rows = [a for a in aggs if a["dataset"] == ds and a["task"] == "classification"]
        out[ds] = _classification_findings(rows, max_gap, max_acc_loss)
    reg = [a for a in aggs if a["task"] == "regression"]
    if reg:
        out["regression"] = _regression_findings(reg)
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(aggs: List[Dict[str, Any]], out: Path) -> List[Path]:
    """Pareto fronts per data set, the JSD-vs-λ calibration plot and the regression plot (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for ds in sorted({a["dataset"] for a in aggs if a["task"] == "classification"}):
        rows = [a for a in aggs if a["dataset"] == ds and a["task"] == "classification"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (m, label) in zip(axes, (("dp_difference", "DP difference (points)"),
                                         ("eo_difference", "EO difference (points)"),
                                         ("jsd", "intersectional JSD (bits)"))):
            for name in dict.fromkeys(a["setting"] for a in rows):
                pts = sorted((a for a in rows if a["setting"] == name), key=lambda a: a["lam"])
                fam = pts[0]["family"]
                single = {"baseline": "*", "postprocess": "X"}  # one point each: a marker, no line
                style = dict(marker=single[fam], markersize=12, linestyle="none") if fam in single else \
                    dict(marker="o", linestyle="--" if fam == "diffdp" else "-")
                ax.plot([a[m] for a in pts], [a["acc"] for a in pts], label=name, **style)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{ds}: accuracy vs fairness measures (mean over seeds, each curve over λ)")
        written.append(_save(fig, out / f"pareto_{ds}.png"))
    dep = [a for a in aggs if a["family"] == "dependence" and a["task"] == "classification"]
    if dep:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for (ds, name), rs in _group(dep, ("dataset", "setting")).items():
            base = next((a for a in aggs if a["dataset"] == ds and a["family"] == "baseline"
                         and a["task"] == "classification"), None)
            curve = ([(0.0, base["jsd"])] if base else []) + sorted((a["lam"], a["jsd"]) for a in rs)
            lam = [max(p[0], 0.3) for p in curve]  # λ = 0 drawn at the left edge of the log axis
            ax.plot(lam, [p[1] for p in curve], marker="o", label=f"{ds} {name}")
        ax.set_xscale("log")
        ax.set_xlabel("λ (baseline at the left edge)")
        ax.set_ylabel("test JSD across race × sex cells (bits)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "calibration.png"))
    reg = [a for a in aggs if a["task"] == "regression"]
    if reg:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, (m, label) in zip(axes, (("dcor", "dCor² with sex, race, age"), ("jsd", "JSD across cells (bits)"))):
            for name in dict.fromkeys(a["setting"] for a in reg):
                pts = sorted((a for a in reg if a["setting"] == name), key=lambda a: a["lam"])
                ax.plot([a[m] for a in pts], [a["rmse"] for a in pts], marker="*" if len(pts) == 1 else "o",
                        label=name)
            ax.set_xlabel(label)
            ax.set_ylabel("test RMSE (standardised decile score)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle("COMPAS decile score regression")
        written.append(_save(fig, out / "regression.png"))
    return written


# --- command line -------------------------------------------------------------------------------------------------------
def jobs_for(datasets: Sequence[str], seeds: int, full: bool, epochs: Optional[int], data_dir: Optional[str],
             subsample: Optional[int], regression: bool) -> List[Dict[str, Any]]:
    jobs = []
    tasks = [("classification", d) for d in datasets] + ([("regression", "compas")] if regression else [])
    for task, ds in tasks:
        ep = epochs or DATASETS[ds][1][1 if full else 0]
        for s in settings_for(ds, task):
            lams = sorted(set(s.lams) | (set(s.extra_lams) if full else set()))
            for lam in lams:
                for seed in range(seeds):
                    jobs.append({"dataset": ds, "task": task, "setting": s.name, "lam": float(lam), "seed": seed,
                                 "epochs": ep, "data_dir": data_dir, "subsample": subsample})
    return jobs


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m fairret.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more seeds (5), epochs and λ values")
    parser.add_argument("--out", default="fairret-demo", help="output directory (default: fairret-demo)")
    parser.add_argument("--data-dir", default=None, help="folder with compas/ and adult/ (default: FAIRRET_DATA_DIR, "
                        "then ../shared/data)")
    parser.add_argument("--datasets", default="compas,adult", help="comma-separated: compas, adult")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3, --full 5)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs per run")
    parser.add_argument("--subsample", type=int, default=None, help="use only this many rows per data set")
    parser.add_argument("--no-regression", action="store_true", help="skip the COMPAS decile-score regression")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--max-gap", type=float, default=1.0, help="DP difference (points) within which the summary "
                        "names the most accurate setting (default 1)")
    parser.add_argument("--max-accuracy-loss", type=float, default=2.0, help="accuracy (points below the "
                        "unconstrained model) within which the summary names the lowest JSD (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    require_extra("lightning", "python -m fairret.demo", "lightning")
    for flag, value in (("--max-gap", args.max_gap), ("--max-accuracy-loss", args.max_accuracy_loss)):
        if not 0 <= value < float("inf"):
            parser.error(f"{flag} must be a finite number >= 0, got {value!r}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in DATASETS]
    if bad or not datasets:
        parser.error(f"--datasets must name compas and/or adult, got {args.datasets!r}")
    seeds = args.seeds or (5 if args.full else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = jobs_for(datasets, seeds, args.full, args.epochs, args.data_dir, args.subsample,
                    not args.no_regression and "compas" in datasets)
    bar = progress_bar(len(jobs), None if args.quiet else "training runs", "run")
    rows: List[Dict[str, Any]] = []
    if args.workers > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(run_one, jobs):
                rows.append(r)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            rows.append(run_one(job))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    with open(out / "runs.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cls = aggregate([r for r in rows if r["task"] == "classification"], CLS_METRICS)
    reg = aggregate([r for r in rows if r["task"] == "regression"], REG_METRICS)
    minutes = (time.perf_counter() - t0) / 60
    md = [f"# fairret demo ({'full' if args.full else 'quick'}: {seeds} seeds, {len(rows)} runs, {minutes:.1f} min)",
          "", "Test split; mean ± standard deviation over seeds. DP difference: the largest difference of positive "
          "rates between two groups; EO difference: the larger of the largest TPR and FPR differences; both in "
          "points, predictions thresholded at 0.5. JSD in bits across race × sex cells; dCor² with (sex, race, age); "
          "s/run: training time of one run (trainer.fit)."]
    found = findings(cls + reg, args.max_gap, args.max_accuracy_loss)
    for ds in datasets:
        groups = " × ".join(DATASETS[ds][0])
        md += ["", f"## {ds} (groups: {groups})", "", _table([a for a in cls if a["dataset"] == ds], CLS_METRICS, FMT)]
        if found.get(ds):
            md += ["", "What it shows:", ""] + found[ds]
    if reg:
        md += ["", "## COMPAS decile score (regression, standardised)", "", _table(reg, REG_METRICS, FMT), "",
               "What it shows:", ""] + found.get("regression", [])
    figs = plots(cls + reg, out)
    md += ["", "Figures: " + ", ".join(p.name for p in figs) if figs else "(matplotlib missing: no figures)"]
    text = "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(f"written to {out.resolve()}")
    return {"rows": rows, "classification": cls, "regression": reg, "findings": found, "figures": figs}


if __name__ == "__main__":
    main()
