"""Packaging glue that pyproject.toml cannot express: folders of the repository that ship inside the wheel under
another name. The CUDA sources in ``cuda/`` become ``fairret/_cuda_src`` (compiled on first use on a CUDA machine,
see ``fairret/ops/cuda.py``); the LightningCLI configs in ``callbacks/`` (where users of a checkout see them) become
``fairret/lightning/configs`` (found from an installed copy by ``fairret.lightning.config_path``). Everything else is
in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fairret", "fairret.*"]) + ["fairret._cuda_src", "fairret.lightning.configs"],
    package_dir={"fairret._cuda_src": "cuda", "fairret.lightning.configs": "callbacks"},
    package_data={"fairret": ["py.typed"], "fairret._cuda_src": ["*.cuh", "*.cu", "*.cpp", "*.h"],
                  "fairret.lightning.configs": ["*.yaml", "README.md"]},
)
