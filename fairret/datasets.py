"""Loaders for real fairness data sets: COMPAS (ProPublica) and Adult (UCI), without pandas.

Each file is looked up, in order:

1. the explicit ``path`` argument (the file itself, or a directory holding it or ``<dataset>/<file>``);
2. the directory in the ``FAIRRET_DATA_DIR`` environment variable (same layout);
3. ``../shared/data`` relative to the working directory and to this repository's checkout, when it exists;
4. the user cache ``$XDG_CACHE_HOME/fairret`` (default ``~/.cache/fairret``);
5. a download from the canonical source into the cache, verified by sha256 (only with ``download=True``).

If none works, a ``FileNotFoundError`` names the file and every place searched.

Example:
    >>> ds = load_compas()  # doctest: +SKIP
    >>> ds.features.shape, ds.label.mean()  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TypedDict, Union

import numpy as np
import torch

__all__ = ["TabularDataset", "find_data_file", "load_compas", "load_adult", "SOURCES"]

PathLike = Union[str, os.PathLike]

#: Canonical sources. ``sha256`` is the checksum of the canonical file; where none is pinned, a download needs
#: the caller's ``sha256=`` (nothing unverified is ever written to the cache).
class _Source(TypedDict):
    url: str
    sha256: Optional[str]


SOURCES: Dict[str, _Source] = {
    "compas/compas-scores-two-years.csv": {
        "url": "https://raw.githubusercontent.com/propublica/compas-analysis/master/compas-scores-two-years.csv",
        "sha256": None,
    },
    "adult/adult.data": {
        "url": "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.data",
        "sha256": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    },
    "adult/adult.test": {
        "url": "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.test",
        "sha256": None,
    },
}


@dataclass
class TabularDataset:
    """Features, label and protected attributes of a tabular data set.

    Attributes:
        name: data set name.
        features: ``(N, F)`` float32 tensor (protected attributes excluded unless asked for).
        feature_names: ``F`` names.
        label: ``(N,)`` float32 tensor of 0/1.
        sensitive: protected attribute name → ``(N,)`` NumPy array of raw values (strings or numbers), ready for
            :class:`fairret.sensitive.SensitiveEncoder`.
        extra: other columns (e.g. COMPAS ``decile_score``, Adult ``split``).
        standardized: whether :meth:`standardize` scaled the features. The loaders return raw features unless
            ``standardize=True`` (Adult's ``fnlwgt`` is about 1e5, ``capital-gain`` up to 1e5): scale them before
            training a network, with statistics from the training rows.

    Example:
        >>> ds = TabularDataset("toy", torch.tensor([[1., 0.], [3., 1.]]), ["x", "flag"], torch.tensor([0., 1.]),
        ...                     {"sex": np.array(["F", "M"])})
        >>> ds
        TabularDataset('toy': 2 rows, 2 features (raw), label rate 0.500, sensitive ['sex'])
        >>> ds.standardize().features  # the 0/1 column is left as it is
        tensor([[-1.,  0.],
                [ 1.,  1.]])
    """

    name: str
    features: torch.Tensor
    feature_names: List[str]
    label: torch.Tensor
    sensitive: Dict[str, np.ndarray]
    extra: Dict[str, np.ndarray] = field(default_factory=dict)
    standardized: bool = False

    def __len__(self) -> int:
        return self.features.shape[0]

    def __repr__(self) -> str:
        rate = float(self.label.float().mean()) if len(self) else float("nan")
        scale = "standardised" if self.standardized else "raw"
        return (f"TabularDataset({self.name!r}: {len(self)} rows, {self.features.shape[1]} features ({scale}), "
                f"label rate {rate:.3f}, sensitive {list(self.sensitive)})")

    def standardize(self, fit_on: Optional["TabularDataset"] = None) -> "TabularDataset":
        """A copy whose non-binary feature columns have mean 0 and standard deviation 1 on ``fit_on`` (default:
        these rows); 0/1 columns (one-hot categories) are unchanged, constant columns only centred.

        Fit on the training rows and apply the same statistics to the test rows:
        ``test.standardize(fit_on=train)``.
        """
        ref = (self if fit_on is None else fit_on).features
        if ref.shape[1] != self.features.shape[1]:
            raise ValueError(f"Expected argument `fit_on` to have {self.features.shape[1]} features, but it has "
                             f"{ref.shape[1]}")
        binary = ((ref == 0) | (ref == 1)).all(0)
        mu = torch.where(binary, torch.zeros_like(ref[0]), ref.mean(0))
        sd = torch.where(binary, torch.ones_like(ref[0]), ref.std(0, unbiased=False))
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        return TabularDataset(self.name, (self.features - mu) / sd, list(self.feature_names), self.label,
                              dict(self.sensitive), dict(self.extra), True)

    def subset(self, index: Union[np.ndarray, torch.Tensor, Sequence[int]]) -> "TabularDataset":
        """Rows selected by an index array or boolean mask."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        t = torch.as_tensor(idx, dtype=torch.long)
        return TabularDataset(self.name, self.features[t], list(self.feature_names), self.label[t],
                              {k: v[idx] for k, v in self.sensitive.items()},
                              {k: v[idx] for k, v in self.extra.items()}, self.standardized)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fairret"


def _shared_candidates() -> List[Path]:
    here = Path(__file__).resolve().parent.parent  # the checkout (editable install) or site-packages
    return [Path.cwd() / ".." / "shared" / "data", here / ".." / "shared" / "data"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_data_file(relpath: str, path: Optional[PathLike] = None, *, download: bool = False,
                   sha256: Optional[str] = None) -> Path:
    """Locate ``relpath`` (e.g. ``"adult/adult.data"``) by the lookup order of this module.

    Args:
        relpath: ``<dataset>/<file>``.
        path: explicit file or directory.
        download: allow the download step.
        sha256: expected checksum of the downloaded file (overrides the pinned one).

    Raises:
        FileNotFoundError: naming the file and every place searched.
        ValueError: when a download's checksum does not match, or no checksum is known.
    """
    fname = Path(relpath).name
    tried: List[str] = []

    def probe(directory: Path) -> Optional[Path]:
        for cand in (directory / relpath, directory / fname):
            tried.append(str(cand))
            if cand.is_file():
                return cand
        return None

    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        tried.append(str(p))
        if p.is_dir() and (found := probe(p)):
            return found
    env = os.environ.get("FAIRRET_DATA_DIR")
    if env and (found := probe(Path(env))):
        return found
    for cand_dir in _shared_candidates():
        if cand_dir.is_dir() and (found := probe(cand_dir)):
            return found
    cache = _cache_dir()
    if (found := probe(cache)):
        return found
    if download:
        return _download(relpath, cache / relpath, sha256)
    raise FileNotFoundError(
        f"Could not find the data file {relpath!r}. Looked in: {', '.join(tried)}. Pass `path=`, set "
        f"FAIRRET_DATA_DIR to a directory holding {relpath!r}, or call with download=True."
    )


def _download(relpath: str, dest: Path, sha256: Optional[str]) -> Path:
    src = SOURCES.get(relpath)
    if src is None:
        raise ValueError(f"No canonical source is known for {relpath!r}")
    expected = sha256 or src["sha256"]
    if expected is None:
        raise ValueError(f"No pinned sha256 is known for {relpath!r} (source {src['url']}); pass `sha256=` with the "
                         f"checksum you trust, or place the file in FAIRRET_DATA_DIR")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        with urllib.request.urlopen(src["url"], timeout=60) as resp:  # noqa: S310 - fixed https source
            shutil.copyfileobj(resp, tmp)
    got = _sha256(Path(tmp.name))
    if got != expected:
        os.unlink(tmp.name)
        raise ValueError(f"Checksum mismatch for {relpath!r} from {src['url']}: expected {expected}, got {got}")
    os.replace(tmp.name, dest)
    return dest


def _read_csv(path: Path, header: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Read a CSV into name → array of stripped strings; ``header`` names columns of a header-less file."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f, skipinitialspace=True) if r and any(x.strip() for x in r)]
    if not rows:
        raise ValueError(f"The data file {path} is empty")
    if header is not None and [c.lower() for c in rows[0][: len(header)]] != [h.lower() for h in header]:
        cols = header  # header-less canonical file
    else:
        cols, rows = rows[0], rows[1:]
    rows = [r for r in rows if len(r) == len(cols) and not r[0].startswith("|")]
    data = np.array(rows, dtype=object)
    return {c: data[:, i] for i, c in enumerate(cols)}


def _one_hot(values: np.ndarray, name: str):
    cats = sorted(set(values.tolist()))
    mat = (values[:, None] == np.array(cats, dtype=object)[None, :]).astype(np.float32)
    return mat, [f"{name}={c}" for c in cats]


def load_compas(path: Optional[PathLike] = None, *, propublica_filter: bool = True,
                include_sensitive_in_features: bool = False, download: bool = False,
                sha256: Optional[str] = None, standardize: bool = False) -> TabularDataset:
    """COMPAS two-year recidivism (ProPublica ``compas-scores-two-years.csv``).

    Label ``two_year_recid``; protected attributes ``race`` (six values), ``sex`` and ``age`` (years). Features:
    age, priors and juvenile counts, charge degree and days in jail; the COMPAS scores are not features (they are
    in ``extra["decile_score"]`` for regression studies).

    Args:
        path: explicit file or directory (see the module's lookup order).
        propublica_filter: keep the 6,172 rows of ProPublica's standard filter.
        include_sensitive_in_features: also put sex and race (one-hot) among the features.
        download: allow downloading (needs ``sha256=``, no checksum is pinned for this file).
        sha256: checksum for the download.
        standardize: standardise the non-binary features on all returned rows (:meth:`TabularDataset.standardize`;
            for a held-out split, load raw and use ``test.standardize(fit_on=train)`` instead).
    """
    file = find_data_file("compas/compas-scores-two-years.csv", path, download=download, sha256=sha256)
    raw = _read_csv(file)
    needed = ["sex", "age", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
              "days_b_screening_arrest", "c_jail_in", "c_jail_out", "c_charge_degree", "is_recid", "score_text",
              "two_year_recid", "decile_score"]
    missing = [c for c in needed if c not in raw]
    if missing:
        raise ValueError(f"The COMPAS file {file} lacks the columns {missing}")
    keep = np.ones(len(raw["sex"]), dtype=bool)
    if propublica_filter:
        days = np.array([float(x) if x not in ("", "NA") else np.nan for x in raw["days_b_screening_arrest"]])
        keep &= (days >= -30) & (days <= 30)
        keep &= raw["is_recid"] != "-1"
        keep &= raw["c_charge_degree"] != "O"
        keep &= raw["score_text"] != "N/A"
    raw = {k: v[keep] for k, v in raw.items()}

    def days_in_jail(a: str, b: str) -> float:
        try:
            fmt = "%Y-%m-%d %H:%M:%S"
            return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() / 86400.0
        except ValueError:
            return 0.0

    num_cols = ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
    feats = [raw[c].astype(np.float32)[:, None] for c in num_cols]
    names = list(num_cols)
    feats.append(np.array([days_in_jail(a, b) for a, b in zip(raw["c_jail_in"], raw["c_jail_out"])],
                          dtype=np.float32)[:, None])
    names.append("days_in_jail")
    feats.append((raw["c_charge_degree"] == "F").astype(np.float32)[:, None])
    names.append("charge_degree=F")
    if include_sensitive_in_features:
        for c in ("sex", "race"):
            mat, n = _one_hot(raw[c], c)
            feats.append(mat)
            names += n
    x = torch.from_numpy(np.concatenate(feats, axis=1))
    y = torch.from_numpy(raw["two_year_recid"].astype(np.float32))
    sens = {"race": raw["race"].astype(str), "sex": raw["sex"].astype(str), "age": raw["age"].astype(np.float64)}
    extra = {"decile_score": raw["decile_score"].astype(np.float64)}
    ds = TabularDataset("compas", x, names, y, sens, extra)
    return ds.standardize() if standardize else ds


ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "Y"]


def load_adult(path: Optional[PathLike] = None, *, split: str = "all", drop_missing: bool = True,
               include_sensitive_in_features: bool = False, download: bool = False,
               standardize: bool = False) -> TabularDataset:
    """UCI Adult (census income > 50K), both splits encoded consistently.

    Label ``Y`` (1 for ``>50K``); protected attributes ``sex``, ``race`` and ``age``. Features: the numeric
    columns and one-hot categoricals (categories from both splits), without sex and race unless asked for.
    ``extra["split"]`` says ``train`` or ``test`` for each row.

    Args:
        path: explicit directory holding ``adult.data`` and ``adult.test`` (or ``adult/`` below it).
        split: ``all``, ``train`` or ``test``.
        drop_missing: drop rows with a ``?`` (30,162 train and 15,060 test rows remain).
        include_sensitive_in_features: also put sex and race (one-hot) among the features.
        download: allow downloading (``adult.test`` has no pinned checksum).
        standardize: standardise the non-binary features (``fnlwgt`` is about 1e5 raw) with the mean and standard
            deviation of the *training* rows (:meth:`TabularDataset.standardize`), whatever ``split`` returns.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"Expected argument `split` to be 'all', 'train' or 'test', but got {split!r}")
    parts = []
    for name, rel in (("train", "adult/adult.data"), ("test", "adult/adult.test")):
        file = find_data_file(rel, path, download=download)
        raw = _read_csv(file, header=ADULT_COLUMNS)
        missing = [c for c in ADULT_COLUMNS if c not in raw]
        if missing:
            raise ValueError(f"The Adult file {file} lacks the columns {missing}")
        raw["split"] = np.array([name] * len(raw["age"]), dtype=object)
        parts.append(raw)
    raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = np.ones(len(raw["age"]), dtype=bool)
    if drop_missing:
        for c in ADULT_COLUMNS:
            keep &= raw[c] != "?"
    raw = {k: v[keep] for k, v in raw.items()}
    label = np.array([s.rstrip(".") == ">50K" for s in raw["Y"]], dtype=np.float32)
    num_cols = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
    feats = [raw[c].astype(np.float32)[:, None] for c in num_cols]
    names = list(num_cols)
    cat_cols = ["workclass", "education", "marital-status", "occupation", "relationship", "native-country"]
    if include_sensitive_in_features:
        cat_cols += ["race", "sex"]
    for c in cat_cols:
        mat, n = _one_hot(raw[c], c)
        feats.append(mat)
        names += n
    ds = TabularDataset(
        "adult", torch.from_numpy(np.concatenate(feats, axis=1)), names, torch.from_numpy(label),
        {"sex": raw["sex"].astype(str), "race": raw["race"].astype(str), "age": raw["age"].astype(np.float64)},
        {"split": raw["split"].astype(str)},
    )
    if standardize:
        ds = ds.standardize(fit_on=ds.subset(ds.extra["split"] == "train"))
    if split != "all":
        ds = ds.subset(ds.extra["split"] == split)
    return ds
