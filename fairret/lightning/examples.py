"""A small tabular classifier and data module to try the callbacks (and the YAMLs in ``callbacks/``) with.

:class:`TabularDataModule` serves COMPAS or Adult (from ``data_dir``, ``FAIRRET_DATA_DIR`` or ``../shared/data``)
or a synthetic data set, as dict batches:

* ``x`` ``(N, F)`` standardised features, ``y`` ``(N,)`` 0/1 labels;
* ``sens`` ``(N, S)``: one-hot columns of the categorical protected attributes (for linear-fractional losses);
* ``cells`` ``(N,)``: the id of each row's intersectional cell of those attributes;
* one tensor per protected attribute under its own name (``sex``, ``race``: one-hot; ``age``: min-max scaled),
  for CCdCov / JdCov on attributes of mixed types.

:class:`TabularClassifier` is an MLP trained with binary cross-entropy; it knows nothing about fairness.

Example:
    >>> import lightning.pytorch as pl
    >>> dm = TabularDataModule("synthetic", n_synthetic=256, batch_size=64)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> sorted(batch)
    ['age', 'cells', 'race', 'sens', 'sex', 'x', 'y']
    >>> batch["sens"].shape[1] == dm.num_groups
    True
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..datasets import TabularDataset, load_adult, load_compas
from ..sensitive import SensitiveEncoder

__all__ = ["TabularDataModule", "TabularClassifier", "TabularRegressor", "EpochShuffleSampler", "synthetic_dataset",
           "shortcut_data", "ShortcutDataModule", "TwoTowerClassifier"]

_COMPAS_RACES = ("African-American", "Caucasian", "Hispanic")


def synthetic_dataset(n: int = 2000, seed: int = 0) -> TabularDataset:
    """A biased synthetic classification task: the label depends on features correlated with sex and race."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male"], size=n)
    race = rng.choice(["A", "B", "C"], size=n, p=[0.5, 0.3, 0.2])
    age = rng.uniform(18, 70, size=n)
    shift = (sex == "Male") * 1.0 + (race == "A") * 0.7 - (age - 40) / 30
    x = rng.normal(size=(n, 6)) + shift[:, None] * np.array([0.8, 0.5, 0.0, 0.3, 0.0, 0.2])
    logit = x @ np.array([1.0, -0.5, 0.8, 0.4, 0.0, 0.3]) + 0.5 * shift
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return TabularDataset("synthetic", torch.tensor(x, dtype=torch.float32), [f"f{i}" for i in range(6)],
                          torch.tensor(y), {"sex": sex, "race": race, "age": age})


class _DictDataset(Dataset):
    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.tensors = tensors
        self.n = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: List[int]) -> Dict[str, torch.Tensor]:
        """A whole batch in one indexing per tensor (the DataLoader's batched fetch; per-row dicts and their
        collation cost more than the training step on these small models)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def _collate_batch(batch: Any) -> Dict[str, torch.Tensor]:
    """The batch fetched by ``__getitems__`` (a dict of tensors, not the list DataLoader's typing assumes) is already
    collated."""
    return batch


class EpochShuffleSampler(Sampler):
    """A shuffle determined by ``(seed, epoch)``: an interrupted run resumed from a checkpoint sees the same order.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (and swaps in a ``DistributedSampler``
    under DDP).
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class TabularDataModule(pl.LightningDataModule):
    """COMPAS, Adult or synthetic data as dict batches (see the module docstring).

    Args:
        dataset: ``compas``, ``adult`` or ``synthetic``.
        data_dir: folder holding the data files (default: ``FAIRRET_DATA_DIR``, then ``../shared/data``).
        groups: categorical protected attributes one-hot encoded in ``sens`` (and crossed in ``cells``).
        batch_size: rows per batch.
        val_fraction: share of the training rows held out for validation (0: no validation split).
        test_fraction: share of all rows used as test split (COMPAS and synthetic; Adult has its own test file).
        subsample: keep only this many rows (quick runs).
        n_synthetic: rows of the synthetic data set.
        seed: seed of the splits (and of the training shuffle unless ``shuffle_seed`` is given).
        num_workers: DataLoader workers.
        shuffle_seed: seed of the training shuffle (vary it across runs on one fixed split).
        target: ``label`` (the binary label) or, for COMPAS, ``decile_score`` (the COMPAS score 1-10, a regression
            target, standardised on the training rows).
        sensitive_features: also give the model sex and race among the features ``x`` (COMPAS, Adult): their 0/1
            one-hot columns (the ``sex`` and ``race`` entries, COMPAS races merged as for the groups), appended
            unstandardised after the standardised features, so that the model can use them directly and a
            regularizer has to remove that use too.
    """

    def __init__(self, dataset: str = "compas", data_dir: Optional[str] = None,
                 groups: Sequence[str] = ("race", "sex"), batch_size: int = 256, val_fraction: float = 0.2,
                 test_fraction: float = 0.3, subsample: Optional[int] = None, n_synthetic: int = 2000,
                 seed: int = 0, num_workers: int = 0, shuffle_seed: Optional[int] = None, target: str = "label",
                 sensitive_features: bool = False):
        super().__init__()
        if dataset not in ("compas", "adult", "synthetic"):
            raise ValueError(f"Expected argument `dataset` to be 'compas', 'adult' or 'synthetic', but got {dataset!r}")
        if not groups or any(g not in ("race", "sex") for g in groups):
            raise ValueError(f"Expected argument `groups` to name 'race' and/or 'sex', but got {list(groups)}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"Expected argument `val_fraction` in [0, 1), but got {val_fraction!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"Expected argument `test_fraction` in (0, 1), but got {test_fraction!r}")
        if target not in ("label", "decile_score") or (target == "decile_score" and dataset != "compas"):
            raise ValueError(f"Expected argument `target` to be 'label', or 'decile_score' with COMPAS, but got "
                             f"{target!r} with {dataset!r}")
        self.dataset, self.data_dir, self.groups = dataset, data_dir, tuple(groups)
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.subsample, self.n_synthetic, self.seed, self.num_workers = subsample, n_synthetic, seed, num_workers
        if sensitive_features and dataset == "synthetic":
            raise ValueError("Argument `sensitive_features` applies to 'compas' and 'adult', not the synthetic data set")
        self.shuffle_seed, self.target, self.sensitive_features = shuffle_seed, target, bool(sensitive_features)
        self.splits: Dict[str, _DictDataset] = {}
        self.num_features: Optional[int] = None
        self.num_groups: Optional[int] = None
        self.group_names: List[str] = []

    def _load(self):
        if self.dataset == "synthetic":
            ds = synthetic_dataset(self.n_synthetic, self.seed)
        elif self.dataset == "compas":
            ds = load_compas(self.data_dir)
            race = ds.sensitive["race"]
            ds.sensitive["race"] = np.where(np.isin(race, _COMPAS_RACES), race, "Other")
        else:
            ds = load_adult(self.data_dir)
        rng = np.random.default_rng(self.seed)
        if self.dataset == "adult":
            is_test = ds.extra["split"] == "test"
            train_idx, test_idx = rng.permutation(np.nonzero(~is_test)[0]), np.nonzero(is_test)[0]
            if self.subsample:
                train_idx = train_idx[: self.subsample]
                test_idx = test_idx[: max(1, self.subsample // 2)]
        else:
            order = rng.permutation(len(ds))
            if self.subsample:
                order = order[: self.subsample]
            cut = int(round((1 - self.test_fraction) * len(order)))
            train_idx, test_idx = order[:cut], order[cut:]
        n_val = int(round(self.val_fraction * len(train_idx)))
        if self.val_fraction > 0:
            n_val = max(1, n_val)
        return ds, {"train": train_idx[n_val:], "val": train_idx[:n_val], "test": test_idx}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        ds, idx = self._load()
        kinds = {g: "categorical" for g in self.groups}
        enc = SensitiveEncoder(kinds, intersections=[self.groups] if len(self.groups) > 1 else ())
        per_attr = SensitiveEncoder({"sex": "categorical", "race": "categorical", "age": "continuous"})
        tr = idx["train"]
        enc.fit({g: ds.sensitive[g][tr] for g in self.groups})
        per_attr.fit({k: ds.sensitive[k][tr] for k in ("sex", "race", "age")})
        mu = ds.features[tr].mean(0)
        sd = ds.features[tr].std(0).clamp_min(1e-6)
        cell_key = "&".join(self.groups) if len(self.groups) > 1 else self.groups[0]
        if self.target == "decile_score":
            y_all = torch.as_tensor(np.asarray(ds.extra["decile_score"], dtype=np.float32))
            y_mu, y_sd = y_all[tr].mean(), y_all[tr].std().clamp_min(1e-6)
        for split, rows in idx.items():
            enc_rows = enc.transform({g: ds.sensitive[g][rows] for g in self.groups})
            attrs = per_attr.transform({k: ds.sensitive[k][rows] for k in ("sex", "race", "age")})
            marg = [b for b in enc_rows.blocks if b.kind != "intersection"]
            sens = torch.cat([enc_rows.matrix[:, b.columns] for b in marg], dim=1)
            t = torch.as_tensor(rows, dtype=torch.long)
            y = ds.label[t] if self.target == "label" else (y_all[t] - y_mu) / y_sd
            tensors = {"x": (ds.features[t] - mu) / sd, "y": y, "sens": sens,
                       "cells": enc_rows.group_ids[cell_key]}
            for k in ("sex", "race", "age"):
                tensors[k] = attrs.columns_of(k)
            if self.sensitive_features:  # 0/1 columns: standardising a rare category would blow it up
                tensors["x"] = torch.cat([tensors["x"], tensors["sex"], tensors["race"]], dim=1)
            self.splits[split] = _DictDataset(tensors)
            if split == "train":
                self.group_names = [n for b in marg for n in enc_rows.column_names[b.columns]]
                self.num_groups = sens.shape[1]
        self.num_features = self.splits["train"].tensors["x"].shape[1]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.splits[split]
        seed = self.seed if self.shuffle_seed is None else self.shuffle_seed
        sampler = EpochShuffleSampler(len(data), seed) if shuffle else None
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=_collate_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False) if len(self.splits["val"]) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class _SharedSteps(pl.LightningModule):
    """Training, validation and test steps that all call ``self._shared(batch, stage)``."""

    def _shared(self, batch, stage: str) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared(batch, "test")


class TabularClassifier(_SharedSteps):
    """An MLP classifier with binary cross-entropy; logs loss and accuracy. It has no fairness code.

    Args:
        num_features: input width (``None``: taken from the data module at setup).
        hidden: hidden layer widths.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(self, num_features: Optional[int] = None, hidden: Sequence[int] = (32,), lr: float = 3e-3,
                 weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.hidden, self.lr, self.weight_decay = tuple(hidden), lr, weight_decay
        self.net: Optional[torch.nn.Module] = None
        if num_features is not None:
            self._build(num_features)

    def _build(self, num_features: int) -> None:
        layers: List[torch.nn.Module] = []
        width = num_features
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)

    def setup(self, stage: str) -> None:
        if self.net is None:
            # Lightning sets Trainer.datamodule in its data connector; the Trainer class does not declare it
            dm = self.trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]
            if dm is None or getattr(dm, "num_features", None) is None:
                raise ValueError("TabularClassifier needs `num_features` or a TabularDataModule to take it from")
            self._build(dm.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("TabularClassifier is not built: give `num_features`, or fit it with a TabularDataModule")
        return self.net(x)

    def _shared(self, batch: Dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["x"]).squeeze(1)
        y = batch["y"].to(logits.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
        acc = ((logits > 0).float() == y).float().mean()
        n = y.shape[0]
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=stage == "train")
        self.log(f"{stage}/acc", acc, batch_size=n, prog_bar=stage != "train")
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class TabularRegressor(TabularClassifier):
    """The same MLP trained with mean squared error on a real-valued ``y`` (logs loss and RMSE); no fairness code.

    Arguments as :class:`TabularClassifier`.
    """

    def _shared(self, batch: Dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        pred = self(batch["x"]).squeeze(1).float()
        loss = torch.nn.functional.mse_loss(pred, batch["y"].float())
        n = pred.shape[0]
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=stage == "train")
        self.log(f"{stage}/rmse", loss.sqrt(), batch_size=n, prog_bar=stage != "train")
        return loss


def shortcut_data(n: int, seed: int, shortcut_p: float = 0.9, broken: bool = False):
    """Two modalities: ``a`` (8-D) carries the label with probability ``shortcut_p`` (a shortcut; independent of it
    when ``broken``), ``b`` (16-D, four informative coordinates) determines it through a noisy nonlinear rule,
    ``cos(2 b_0) + cos(2 b_1) + b_2 b_3`` plus Gaussian noise (sd 0.4), whose features a network learns slowly: the
    situation in which joint training leaves the weak modality under-fitted. Returns ``(a, b, y)``."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, 16, generator=g)
    score = torch.cos(2 * b[:, 0]) + torch.cos(2 * b[:, 1]) + b[:, 2] * b[:, 3]
    y = (score + 0.4 * torch.randn(n, generator=g) > 0).long()
    if broken:
        t = torch.randint(0, 2, (n,), generator=g)
    else:
        flip = torch.rand(n, generator=g) > shortcut_p
        t = torch.where(flip, torch.randint(0, 2, (n,), generator=g), y)
    direction = torch.randn(8, generator=torch.Generator().manual_seed(99))
    a = (2 * t.float() - 1).unsqueeze(1) * direction + 0.5 * torch.randn(n, 8, generator=g)
    return a, b, y


class ShortcutDataModule(pl.LightningDataModule):
    """:func:`shortcut_data` as ``(a, b, y)`` batches: training and validation with the shortcut, test broken.

    Args:
        n: training rows.
        batch_size: rows per batch.
        seed: data seed.
    """

    def __init__(self, n: int = 4000, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def _loader(self, n: int, seed: int, broken: bool, shuffle: bool) -> DataLoader:
        data = torch.utils.data.TensorDataset(*shortcut_data(n, seed, broken=broken))
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.n, self.seed, False, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(2000, self.seed + 500, False, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2000, self.seed + 600, True, False)


class TwoTowerClassifier(_SharedSteps):
    """Two modality encoders (``audio`` for ``a``, ``video`` for ``b``) and an additive linear fusion ``head``.

    Args:
        width: features per modality (the head takes ``2 * width`` inputs).
        lr: Adam learning rate.
    """

    def __init__(self, width: int = 32, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.audio = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU())
        self.video = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                         torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * width, 2)
        self.lr = lr

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.audio(a), self.video(b)], dim=1))

    def _shared(self, batch, stage: str) -> torch.Tensor:
        a, b, y = batch
        out = self(a, b)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.log(f"{stage}/loss", loss, batch_size=len(y))
        self.log(f"{stage}/acc", (out.argmax(1) == y).float().mean(), batch_size=len(y))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
