"""The package installs what it claims: metadata, the package page, the configs, the wheel's and the sdist's files."""
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import fairret

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _floor(name: str) -> tuple:
    for req in PROJECT["dependencies"]:
        m = re.match(rf"{name}\s*>=\s*([0-9.]+)", req)
        if m:
            return tuple(int(p) for p in m.group(1).split("."))
    raise AssertionError(f"no floor for {name}")


def test_metadata_one_version_license_and_floors():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fairret.__version__"}
    try:
        installed = importlib.metadata.version("fairret-plus")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a plain source tree
        installed = None
    if installed is not None:
        assert installed == fairret.__version__
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: the expression only
    # torch.library.custom_op (torch 2.4) registers the CUDA op when fairret.loss is imported
    assert _floor("torch") >= (2, 4)
    for extra in PROJECT["optional-dependencies"].values():
        for req in extra:
            assert req.startswith("fairret-plus[") or re.search(r">=\s*[0-9]", req), req


def test_package_readme_has_only_absolute_links():
    text = (ROOT / PROJECT["readme"]).read_text()
    targets = re.findall(r"\]\(([^)\s]+)", text) + re.findall(r"""(?:src|href)=["']([^"']+)""", text)
    assert targets, "expected at least one link"
    relative = [t for t in targets if not re.match(r"https?://", t)]
    assert not relative, f"relative links do not render on the package index: {relative}"


def test_config_path_finds_every_config():
    pytest.importorskip("lightning")
    from fairret.lightning import config_path

    folder = config_path()
    listed = set(re.findall(r"\| `([a-z_]+\.yaml)` \|", (folder / "README.md").read_text()))
    assert listed and listed == {p.name for p in folder.glob("*.yaml")}
    assert config_path("projection_dp") == config_path("projection_dp.yaml") == folder / "projection_dp.yaml"
    with pytest.raises(ValueError, match=r"Expected argument `name` to be one of \['ccdcov_multitype', "):
        config_path("no_such_config")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel and the sdist, built from a copy of the source tree by setuptools' PEP 517 hooks (no network)."""
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip(f"setuptools {setuptools.__version__} cannot build the SPDX license expression (needs >= 77)")
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.egg-info", "build",
                                                             "dist", ".pytest_cache", ".hypothesis", "fairret-demo"))
    res = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                          "w = b.build_wheel('../out'); s = b.build_sdist('../out'); print('BUILT', w, s)"],
                         cwd=src, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel, sdist = res.stdout.rsplit("BUILT", 1)[1].split()
    return tmp / "out" / wheel, tmp / "out" / sdist


def test_wheel_carries_the_configs_typing_marker_license_and_metadata(built):
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    configs = {Path(n).name for n in names if n.startswith("fairret/lightning/configs/")}
    assert configs == {p.name for p in (ROOT / "callbacks").iterdir()}  # the YAMLs and their README
    assert "fairret/py.typed" in names
    assert {"fairret/_cuda_src/dcov_kernels.cuh", "fairret/_cuda_src/dcov_ext.cu"} <= set(names)
    assert "fairret/postprocess.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    dist_info = f"fairret_plus-{fairret.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    meta = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert f"Version: {fairret.__version__}\n" in meta
    assert "License-Expression: MIT\n" in meta
    assert "Requires-Dist: torch>=2.4\n" in meta
    assert "Provides-Extra: quant\n" in meta
    assert "Description-Content-Type: text/markdown\n" in meta
    assert meta.split("\n\n", 1)[1].strip() == (ROOT / "README.pypi.md").read_text().strip()


def test_sdist_holds_what_the_tests_need(built):
    _, sdist = built
    top = f"fairret_plus-{fairret.__version__}/"
    names = {n[len(top):] for n in tarfile.open(sdist).getnames() if n.startswith(top)}
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*") if p.is_file() and "__pycache__" not in
             p.parts}
    assert tests <= names, sorted(tests - names)
    for needed in ("tests/conftest.py", "tests/lightning_helpers.py", "tests/data/golden_fairret013.json",
                   "callbacks/demographic_parity.yaml", "cuda/dcov_kernels.cuh", "LICENSE", "README.md",
                   "README.pypi.md", "pyproject.toml", "setup.py", "fairret/py.typed"):
        assert needed in names, needed
