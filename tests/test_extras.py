"""Without an extra, its modules and commands fail at import with the install command (fairret._extras)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("blocked,code,message", [
    ("transformers", "import fairret.quant.model",
     "fairret.quant.model needs the 'quant' extra (missing: transformers): pip install 'fairret-plus[quant]'"),
    ("safetensors", "import runpy; runpy.run_module('fairret.quant', run_name='__main__')",
     "python -m fairret.quant needs the 'quant' extra (missing: safetensors): pip install 'fairret-plus[quant]'"),
    ("lightning", "import fairret.lightning",
     "fairret.lightning needs the 'lightning' extra (missing: lightning): pip install 'fairret-plus[lightning]'"),
    ("lightning", "import fairret.demo; fairret.demo.main(['--quiet'])",
     "python -m fairret.demo needs the 'lightning' extra (missing: lightning): pip install 'fairret-plus[lightning]'"),
])
def test_missing_extra_names_the_install_command(blocked, code, message):
    # sys.modules[name] = None: the package counts as not installed, for import and for importlib.util.find_spec
    res = subprocess.run([sys.executable, "-c", f"import sys; sys.modules[{blocked!r}] = None; {code}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    assert f"ImportError: {message}" in res.stderr, res.stderr[-2000:]


def test_the_core_imports_without_the_extras():
    # transformers, safetensors and matplotlib stay: torchmetrics imports transformers (which imports safetensors)
    # and matplotlib when their distributions are installed; a bare install without them is CI's fresh-venv wheel
    # check (.ci/package)
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in ("lightning", "jsonargparse"))
    code = ("import fairret.loss, fairret.metric, fairret.statistic, fairret.postprocess, fairret.quant, "
            "fairret.modality, fairret.sensitive, fairret.datasets, fairret.demo")
    res = subprocess.run([sys.executable, "-c", f"import sys; {blocked}; {code}"], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
