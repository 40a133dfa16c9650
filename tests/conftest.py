import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared test helpers
DATA_DIR = Path(os.environ.get("FAIRRET_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "compas" / "compas-scores-two-years.csv").is_file():
        pytest.skip(f"real data not found in {DATA_DIR} (set FAIRRET_DATA_DIR)")
    return DATA_DIR


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
