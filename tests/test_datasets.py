
import pytest
import torch

from fairret.datasets import find_data_file, load_adult, load_compas


def test_compas_propublica_filter(data_dir):
    ds = load_compas(data_dir)
    assert len(ds) == 6172
    assert ds.features.shape == (6172, len(ds.feature_names))
    assert set(ds.sensitive) == {"race", "sex", "age"}
    assert 0.4 < ds.label.mean().item() < 0.5
    assert len(load_compas(data_dir, propublica_filter=False)) == 7214


def test_adult_splits(data_dir):
    ds = load_adult(data_dir)
    assert (ds.extra["split"] == "train").sum() == 30162 and (ds.extra["split"] == "test").sum() == 15060
    assert len(load_adult(data_dir, split="test")) == 15060
    assert not any(n.startswith(("sex=", "race=")) for n in ds.feature_names)
    assert 0.2 < ds.label.mean().item() < 0.3


def test_lookup_env_var_and_errors(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRRET_DATA_DIR", str(data_dir))
    assert find_data_file("compas/compas-scores-two-years.csv").is_file()
    monkeypatch.setenv("FAIRRET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    import fairret.datasets as D
    monkeypatch.setattr(D, "_shared_candidates", lambda: [])
    with pytest.raises(FileNotFoundError, match=r"Could not find the data file 'adult/adult.test'"):
        find_data_file("adult/adult.test")
    with pytest.raises(ValueError, match=r"No pinned sha256 is known for 'adult/adult.test'"):
        find_data_file("adult/adult.test", download=True)
    with pytest.raises(ValueError, match=r"Expected argument `split`"):
        load_adult(data_dir, split="valid")


def test_standardize_scales_non_binary_columns_on_the_training_rows(data_dir):
    raw = load_adult(data_dir)
    std = load_adult(data_dir, standardize=True, split="test")
    train = raw.subset(raw.extra["split"] == "train").features.double()
    test = raw.subset(raw.extra["split"] == "test").features.double()
    j = raw.feature_names.index("fnlwgt")
    expected = (test[:, j] - train[:, j].mean()) / train[:, j].std(unbiased=False)
    torch.testing.assert_close(std.features[:, j].double(), expected, rtol=1e-4, atol=1e-4)
    k = next(i for i, n in enumerate(raw.feature_names) if n.startswith("workclass"))
    torch.testing.assert_close(std.features[:, k], test[:, k].float())  # one-hot columns untouched
    assert "standardised" in repr(std) and "raw" in repr(raw) and "rows" in repr(raw)
