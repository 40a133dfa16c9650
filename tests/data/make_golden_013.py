"""Regenerate golden_fairret013.json with PyPI fairret 0.1.3 (run in a venv holding that version, not this one).

    python -m venv /tmp/v013 && /tmp/v013/bin/pip install torch==2.13.0 fairret==0.1.3
    /tmp/v013/bin/python tests/data/make_golden_013.py > tests/data/golden_fairret013.json

The inputs are generated from a fixed seed with plain torch so the tests can rebuild them.
"""
import json

import torch
from fairret.loss import LSELoss, NormLoss
from fairret.statistic import (Accuracy, FalseNegativeFalsePositiveFraction, FalseOmissionRate, FalsePositiveRate,
                               FScore, PositivePredictiveValue, PositiveRate, StackedLinearFractionalStatistic,
                               TruePositiveRate)


def inputs():
    g = torch.Generator().manual_seed(2024)
    logits = torch.randn(64, 1, generator=g, dtype=torch.float64)
    label = (torch.rand(64, 1, generator=g, dtype=torch.float64) < 0.4).double()
    groups = torch.randint(0, 3, (64,), generator=g)
    sens = torch.nn.functional.one_hot(groups, 3).double()
    return logits, label, sens


def main():
    logits, label, sens = inputs()
    pred = torch.sigmoid(logits)
    stats = {"PositiveRate": (PositiveRate(), ()), "TruePositiveRate": (TruePositiveRate(), (label,)),
             "FalsePositiveRate": (FalsePositiveRate(), (label,)),
             "PositivePredictiveValue": (PositivePredictiveValue(), (label,)),
             "FalseOmissionRate": (FalseOmissionRate(), (label,)), "Accuracy": (Accuracy(), (label,)),
             "FalseNegativeFalsePositiveFraction": (FalseNegativeFalsePositiveFraction(), (label,)),
             "FScore(2)": (FScore(2.0), (label,)),
             "Stacked(TPR,FPR)": (StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()),
                                  (label,))}
    out = {"statistics": {}, "overall": {}, "NormLoss": {}, "NormLoss_p2": {}, "LSELoss": {}}
    for name, (stat, args) in stats.items():
        out["statistics"][name] = stat(pred, sens, *args).tolist()
        out["overall"][name] = stat.overall_statistic(pred, *args).tolist()
        out["NormLoss"][name] = NormLoss(stat)(logits, sens, *args).item()
        out["NormLoss_p2"][name] = NormLoss(stat, p=2)(logits, sens, *args).item()
        out["LSELoss"][name] = LSELoss(stat)(logits, sens, *args).item()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
