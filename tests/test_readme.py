"""The README's training snippet runs as written, with the λ ranges its own "Choosing λ" table gives."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block(after: str) -> str:
    """The first ```python block after the line holding ``after``."""
    text = (ROOT / "README.md").read_text()
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, text.index(after))
    assert match is not None, f"no python block after {after!r}"
    return match.group(1)


def lambda_ranges() -> dict:
    """'Choosing λ' table: loss text (e.g. ``NormLoss(PositiveRate())``) → (low, high) of its useful λ."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Choosing λ"):]
    section = section[:section.index("\n## ")]
    out = {}
    for loss, lo, hi in re.findall(r"^\| `([^`|]+)`[^|]* \| ([\d.]+)-([\d.]+)", section, re.M):
        out[loss] = (float(lo), float(hi))
    return out


def useful_range(loss) -> tuple:
    """The table's range for this loss and statistic, else for the loss class (e.g. any KL projection)."""
    ranges = lambda_ranges()
    name, stat = type(loss).__name__, type(loss.statistic).__name__
    if f"{name}({stat}())" in ranges:
        return ranges[f"{name}({stat}())"]
    return next(r for key, r in ranges.items() if key.startswith(name + "("))


def test_train_with_a_fairness_loss_snippet_runs_as_written(data_dir, monkeypatch):
    monkeypatch.setenv("FAIRRET_DATA_DIR", str(data_dir))
    code = readme_python_block("Train with a fairness loss")
    assert "import" in code and "load_compas" in code  # self-contained: nothing defined elsewhere
    namespace: dict = {}
    exec(compile(code, "README.md (Train with a fairness loss)", "exec"), namespace)
    loss, model, x = namespace["loss"], namespace["model"], namespace["x"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    with torch.no_grad():
        prob = torch.sigmoid(model(x))
    assert prob.shape == (x.shape[0], 1) and bool(prob.std() > 0.01)  # a trained, not a collapsed, model
    # each penalty's λ lies in the range 'Choosing λ' gives for that loss (not one λ shared by both)
    for loss_name, lam_name in (("dp", "lam_dp"), ("eo", "lam_eo")):
        lo, hi = useful_range(namespace[loss_name])
        assert lo <= namespace[lam_name] <= hi, (loss_name, namespace[lam_name], (lo, hi))


def test_lambda_table_is_read():
    ranges = lambda_ranges()
    assert ranges["NormLoss(PositiveRate())"] == (0.05, 0.5)
    assert ranges["KLProjectionLoss(PositiveRate())"] == (3.0, 30.0)
