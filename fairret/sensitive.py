r"""Encoding protected attributes into the sensitive matrix and the metadata other families need.

A :class:`SensitiveEncoder` is fitted on training columns and turns any split into a :class:`SensitiveAttributes`:

* ``binary`` columns become one 0/1 column (the second of the two sorted values is 1): the right encoding for the
  dependence losses, but a single column is *one* group for a rate loss. Give the rate losses, the metric and the
  fairness monitors the :class:`SensitiveAttributes` itself (they use :meth:`SensitiveAttributes.group_matrix`:
  both values of a binary attribute, one column each), not its ``matrix``; a rate loss given a single column warns,
* ``categorical`` columns become one-hot columns (one per category seen when fitting),
* ``continuous`` columns become one column, min-max scaled to [0, 1] on the fitting data (or standardised),
* ``intersections`` (tuples of categorical/binary attribute names) become one-hot columns over the cells of the
  cross product that are not empty in the fitting data; the number of empty cells dropped is recorded.

Every attribute carries an explicit weight (default 1) that multiplies its columns, and a block entry saying which
columns it owns, so that distance-covariance penalties can weigh attributes explicitly and linear-fractional
losses can use the one-hot columns as groups.

Example:
    >>> import torch
    >>> enc = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"},
    ...                        intersections=[("race", "sex")])
    >>> cols = {"race": ["a", "b", "a", "c"], "sex": ["F", "M", "M", "F"], "age": [20., 40., 30., 60.]}
    >>> s = enc.fit_transform(cols)
    >>> s.matrix.shape, s.column_names[:3], s.dropped_cells
    (torch.Size([4, 9]), ['race=a', 'race=b', 'race=c'], {'race&sex': 2})
    >>> s.group_ids["race&sex"].tolist()
    [0, 2, 1, 3]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["AttributeBlock", "SensitiveAttributes", "SensitiveEncoder", "one_hot_groups"]

KINDS = ("binary", "categorical", "continuous")


@dataclass
class AttributeBlock:
    """One encoded attribute (or intersection) and the columns it owns in the sensitive matrix.

    Attributes:
        name: attribute name (``"a&b"`` for an intersection).
        kind: ``binary``, ``categorical``, ``continuous`` or ``intersection``.
        start, stop: its columns are ``matrix[:, start:stop]``.
        categories: category labels (cells for an intersection) in column order; empty for continuous.
        weight: the weight its columns were multiplied by.
    """

    name: str
    kind: str
    start: int
    stop: int
    categories: List[Any] = field(default_factory=list)
    weight: float = 1.0

    @property
    def columns(self) -> slice:
        """The slice of the sensitive matrix's columns owned by this attribute."""
        return slice(self.start, self.stop)


@dataclass
class SensitiveAttributes:
    """An encoded sensitive matrix with its metadata.

    Attributes:
        matrix: ``(N, S)`` float tensor, weights applied.
        blocks: one :class:`AttributeBlock` per attribute and intersection, in column order.
        column_names: ``S`` names such as ``race=African-American`` or ``age``.
        group_ids: for each categorical/binary attribute and intersection, ``(N,)`` long codes (-1 for a
            value or cell unseen when fitting).
        dropped_cells: for each intersection, how many cells of the cross product were empty when fitting.
    """

    matrix: torch.Tensor
    blocks: List[AttributeBlock]
    column_names: List[str]
    group_ids: Dict[str, torch.Tensor]
    dropped_cells: Dict[str, int]

    def block(self, name: str) -> AttributeBlock:
        """The block of attribute ``name``."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"No sensitive attribute named {name!r}; have {[b.name for b in self.blocks]}")

    def columns_of(self, name: str) -> torch.Tensor:
        """The ``(N, k)`` columns of attribute ``name`` (weights applied)."""
        return self.matrix[:, self.block(name).columns]

    #: Block kinds that define groups (rate statistics compare them); ``continuous`` blocks do not.
    GROUP_KINDS = ("binary", "categorical", "intersection")

    def _group_blocks(self, names: Optional[Sequence[str]]) -> List[AttributeBlock]:
        blocks = [self.block(n) for n in names] if names is not None else \
            [b for b in self.blocks if b.kind in self.GROUP_KINDS]
        for b in blocks:
            if b.kind not in self.GROUP_KINDS:
                raise ValueError(f"Attribute `{b.name}` is continuous: it has no groups for a rate statistic; use a "
                                 f"dependence loss or metric (e.g. DistanceCorrelationLoss) for it")
        return blocks

    def group_matrix(self, names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """The ``(N, G)`` group-membership matrix that rate statistics, losses and metrics use.

        One column per group of each binary, categorical and intersection block (all of them, or those in
        ``names``), in block order, each multiplied by its block's weight. A binary attribute gives **two**
        columns (both of its values), unlike :attr:`matrix`; continuous blocks are left out (they have no groups).
        Rows with a value unseen when fitting belong to no group of that attribute. Column names:
        :meth:`group_names`.

        Example:
            >>> s = SensitiveEncoder({"sex": "binary", "age": "continuous"}).fit_transform(
            ...     {"sex": ["F", "M", "M"], "age": [20., 30., 40.]})
            >>> s.matrix.shape, s.group_matrix(), s.group_names()
            (torch.Size([3, 2]), tensor([[1., 0.],
                    [0., 1.],
                    [0., 1.]]), ['sex=F', 'sex=M'])
        """
        blocks = self._group_blocks(names)
        if not blocks:
            raise ValueError(f"Expected a binary, categorical or intersection attribute to take groups from, but "
                             f"the blocks are {[(b.name, b.kind) for b in self.blocks]}")
        dtype = self.matrix.dtype if self.matrix.is_floating_point() else torch.get_default_dtype()
        mats = [one_hot_groups(self.group_ids[b.name], len(b.categories), dtype).to(self.matrix.device) * b.weight
                for b in blocks]
        return torch.cat(mats, dim=1)

    def group_names(self, names: Optional[Sequence[str]] = None) -> List[str]:
        """The names of the columns of :meth:`group_matrix`, e.g. ``sex=F`` or ``race&sex=a&F``."""
        out = []
        for b in self._group_blocks(names):
            for c in b.categories:
                out.append(f"{b.name}=" + ("&".join(str(x) for x in c) if isinstance(c, tuple) else str(c)))
        return out

    def has_continuous(self) -> bool:
        """Whether a block is continuous (left out of :meth:`group_matrix`)."""
        return any(b.kind not in self.GROUP_KINDS for b in self.blocks)

    def select(self, names: Sequence[str]) -> "SensitiveAttributes":
        """The attributes named in ``names`` only (their blocks and columns, in the order given)."""
        blocks = [self.block(n) for n in names]
        mats, new_blocks, colnames, start = [], [], [], 0
        for b in blocks:
            width = b.stop - b.start
            mats.append(self.matrix[:, b.columns])
            colnames.extend(self.column_names[b.columns])
            new_blocks.append(AttributeBlock(b.name, b.kind, start, start + width, list(b.categories), b.weight))
            start += width
        ids = {k: v for k, v in self.group_ids.items() if k in set(names)}
        drop = {k: v for k, v in self.dropped_cells.items() if k in set(names)}
        return SensitiveAttributes(torch.cat(mats, dim=1), new_blocks, colnames, ids, drop)

    def __getitem__(self, index: Any) -> "SensitiveAttributes":
        """Rows selected like a tensor's first axis (a slice, an index tensor or list, a boolean mask; an int keeps
        its row as ``N = 1``), e.g. a mini-batch ``sens[idx]``; the blocks and names are kept.

        Example:
            >>> s = SensitiveEncoder({"sex": "binary"}).fit_transform({"sex": ["F", "M", "M", "F"]})
            >>> s[1:3].matrix.tolist(), s[torch.tensor([0, 3])].group_ids["sex"].tolist(), len(s[2])
            ([[1.0], [1.0]], [0, 0], 1)
        """
        if isinstance(index, tuple):
            raise IndexError("SensitiveAttributes selects rows only: index it with one slice, index or mask")
        if isinstance(index, int) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"Row {index} is out of range for {n} rows")
            index = slice(index % n, index % n + 1)
        if isinstance(index, torch.Tensor):
            index = index.to(self.matrix.device)
        elif not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index), device=self.matrix.device)
        matrix = self.matrix[index]
        ids = {k: v[index.to(v.device) if isinstance(index, torch.Tensor) else index]
               for k, v in self.group_ids.items()}
        return SensitiveAttributes(matrix, list(self.blocks), list(self.column_names), ids, dict(self.dropped_cells))

    @property
    def shape(self) -> torch.Size:
        """The shape ``(N, S)`` of :attr:`matrix`."""
        return self.matrix.shape

    @property
    def device(self) -> torch.device:
        """The device of :attr:`matrix`."""
        return self.matrix.device

    def to(self, *args: Any, **kwargs: Any) -> "SensitiveAttributes":
        """A copy with the tensors moved/cast like :meth:`torch.Tensor.to` (group ids only moved)."""
        moved = self.matrix.to(*args, **kwargs)
        ids = {k: v.to(moved.device) for k, v in self.group_ids.items()}
        return SensitiveAttributes(moved, list(self.blocks), list(self.column_names), ids, dict(self.dropped_cells))

    def __len__(self) -> int:
        return self.matrix.shape[0]


def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"Expected column `{name}` to be one-dimensional, but got shape {arr.shape}")
    return arr


def _count_nan(arr: np.ndarray) -> int:
    """The number of float NaN values in a column (numeric or object)."""
    if arr.dtype.kind == "f":
        return int(np.isnan(arr).sum())
    if arr.dtype.kind == "O":
        return sum(1 for v in arr.tolist() if isinstance(v, float) and math.isnan(v))
    return 0


def one_hot_groups(codes: torch.Tensor, num_groups: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot ``(N, G)`` matrix from ``(N,)`` group codes; code -1 gives an all-zero row.

    Example:
        >>> one_hot_groups(torch.tensor([0, 2, -1]), 3)
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """
    codes = torch.as_tensor(codes)
    if codes.ndim != 1:
        raise ValueError(f"Expected argument `codes` to have shape (N,), but got {tuple(codes.shape)}")
    if codes.is_floating_point() and codes.numel() and not bool((codes == codes.round()).all()):
        raise ValueError("Expected argument `codes` to hold integer group codes, but got non-integral values "
                         "(or NaN)")
    codes = codes.long()
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 0:
        raise ValueError(f"Expected argument `num_groups` to be an int >= 0, but got {num_groups!r}")
    if codes.numel():  # an encoding helper, not a training-loop op: reading the range is fine
        lo, hi = int(codes.min()), int(codes.max())
        if lo < -1 or hi >= num_groups:
            raise ValueError(f"Expected argument `codes` to hold group codes in [-1, {num_groups}) (-1: no group), "
                             f"but they span [{lo}, {hi}]")
    out = torch.zeros(codes.shape[0], num_groups, dtype=dtype, device=codes.device)
    ok = codes >= 0
    out[ok.nonzero(as_tuple=True)[0], codes[ok]] = 1
    return out


class SensitiveEncoder:
    """Fit on training columns, then encode any split the same way.

    Args:
        kinds: attribute name → ``binary``, ``categorical`` or ``continuous`` (the column order of the output).
        intersections: tuples of binary/categorical attribute names whose cross product becomes extra one-hot
            columns (empty cells dropped).
        weights: attribute (or ``"a&b"`` intersection) name → weight multiplying its columns (default 1).
        continuous_scaling: ``minmax`` (default, to [0, 1]), ``standard`` (zero mean, unit variance) or ``none``.
        include_marginals: when False, attributes used in an intersection get no columns of their own.
    """

    def __init__(self, kinds: Mapping[str, str], intersections: Iterable[Sequence[str]] = (),
                 weights: Optional[Mapping[str, float]] = None, continuous_scaling: str = "minmax",
                 include_marginals: bool = True):
        if not kinds:
            raise ValueError("Expected argument `kinds` to name at least one attribute, but it is empty")
        for name, kind in kinds.items():
            if kind not in KINDS:
                raise ValueError(f"Expected the kind of attribute `{name}` to be one of {KINDS}, but got {kind!r}")
        self.kinds = dict(kinds)
        self.intersections = [tuple(x) for x in intersections]
        for inter in self.intersections:
            if len(inter) < 2:
                raise ValueError(f"Expected each of `intersections` to name at least two attributes, got {inter!r}")
            for a in inter:
                if a not in self.kinds:
                    raise ValueError(f"Intersection {inter!r} names attribute `{a}`, which is not in `kinds`")
                if self.kinds[a] == "continuous":
                    raise ValueError(f"Intersection {inter!r} names the continuous attribute `{a}`; only binary "
                                     f"and categorical attributes can be intersected")
        self.weights = dict(weights or {})
        known = set(self.kinds) | {"&".join(i) for i in self.intersections}
        for k, w in self.weights.items():
            if k not in known:
                raise ValueError(f"Argument `weights` names `{k}`, which is neither an attribute nor an intersection")
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ValueError(f"Expected argument `weights` to give `{k}` a finite non-negative number, but got "
                                 f"{w!r}")
        if continuous_scaling not in ("minmax", "standard", "none"):
            raise ValueError(f"Expected argument `continuous_scaling` to be 'minmax', 'standard' or 'none', but got "
                             f"{continuous_scaling!r}")
        self.continuous_scaling = continuous_scaling
        self.include_marginals = include_marginals
        self.fitted_: Optional[Dict[str, Any]] = None

    def _columns(self, columns: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        missing = [k for k in self.kinds if k not in columns]
        if missing:
            raise ValueError(f"Expected columns for the sensitive attributes {missing}, but they are missing")
        arrs = {k: _as_array(columns[k], k) for k in self.kinds}
        lengths = {len(v) for v in arrs.values()}
        if len(lengths) != 1:
            raise ValueError(f"Expected all sensitive columns to have the same length, but got "
                             f"{ {k: len(v) for k, v in arrs.items()} }")
        for name, kind in self.kinds.items():
            n_missing = _count_nan(arrs[name]) if kind != "continuous" else 0
            if n_missing:
                raise ValueError(f"Expected {kind} attribute `{name}` to have no missing values, but it holds "
                                 f"{n_missing} NaN; give them a category of their own (e.g. 'unknown') or drop "
                                 f"those rows")
        return arrs

    def fit(self, columns: Mapping[str, Any]) -> "SensitiveEncoder":
        """Learn categories, cells and scaling from ``columns`` (name → 1-D values).

        Raises:
            ValueError: missing or empty columns, columns of different lengths, NaN in a binary or categorical
                column (NaN is not equal to itself, so it cannot be a category), non-finite continuous values, a
                binary column without exactly two values.
        """
        arrs = self._columns(columns)
        if not len(next(iter(arrs.values()))):
            raise ValueError("Expected argument `columns` to hold at least one row to fit on, but the columns are "
                             "empty")
        fitted: Dict[str, Any] = {}
        for name, kind in self.kinds.items():
            v = arrs[name]
            if kind == "continuous":
                x = v.astype(np.float64)
                if not np.isfinite(x).all():
                    raise ValueError(f"Expected continuous attribute `{name}` to be finite, but it holds NaN or inf")
                if self.continuous_scaling == "minmax":
                    lo, hi = float(x.min()), float(x.max())
                    fitted[name] = (lo, (hi - lo) if hi > lo else 1.0)
                elif self.continuous_scaling == "standard":
                    sd = float(x.std())
                    fitted[name] = (float(x.mean()), sd if sd > 0 else 1.0)
                else:
                    fitted[name] = (0.0, 1.0)
            else:
                cats = sorted(set(v.tolist()), key=lambda c: (str(type(c)), c))
                if kind == "binary" and len(cats) != 2:
                    raise ValueError(f"Expected binary attribute `{name}` to have exactly 2 values, but got "
                                     f"{len(cats)}: {cats[:5]}")
                fitted[name] = cats
        for inter in self.intersections:
            codes = [self._codes(arrs[a], fitted[a]) for a in inter]
            seen = sorted(set(zip(*[c.tolist() for c in codes])))
            total = int(np.prod([len(fitted[a]) for a in inter]))
            fitted["&".join(inter)] = (seen, total - len(seen))
        self.fitted_ = fitted
        return self

    @staticmethod
    def _codes(values: np.ndarray, cats: List[Any]) -> np.ndarray:
        index = {c: i for i, c in enumerate(cats)}
        return np.array([index.get(v, -1) for v in values.tolist()], dtype=np.int64)

    def transform(self, columns: Mapping[str, Any], dtype: torch.dtype = torch.float32) -> SensitiveAttributes:
        """Encode ``columns`` with what was learnt in :meth:`fit`."""
        if self.fitted_ is None:
            raise RuntimeError("SensitiveEncoder.transform called before fit")
        arrs = self._columns(columns)
        n = len(next(iter(arrs.values())))
        parts: List[torch.Tensor] = []
        blocks: List[AttributeBlock] = []
        names: List[str] = []
        group_ids: Dict[str, torch.Tensor] = {}
        start = 0
        in_inter = {a for inter in self.intersections for a in inter}

        def add(name: str, kind: str, mat: torch.Tensor, cats: List[Any], colnames: List[str]) -> None:
            nonlocal start
            w = float(self.weights.get(name, 1.0))
            parts.append(mat * w)
            blocks.append(AttributeBlock(name, kind, start, start + mat.shape[1], cats, w))
            names.extend(colnames)
            start += mat.shape[1]

        for name, kind in self.kinds.items():
            v = arrs[name]
            if kind == "continuous":
                shift, scale = self.fitted_[name]
                x = torch.as_tensor((v.astype(np.float64) - shift) / scale, dtype=dtype).unsqueeze(1)
                add(name, kind, x, [], [name])
                continue
            cats = self.fitted_[name]
            codes = torch.as_tensor(self._codes(v, cats))
            group_ids[name] = codes
            if not self.include_marginals and name in in_inter:
                continue
            if kind == "binary":
                add(name, kind, (codes == 1).to(dtype).unsqueeze(1), cats, [f"{name}={cats[1]}"])
            else:
                add(name, kind, one_hot_groups(codes, len(cats), dtype), cats, [f"{name}={c}" for c in cats])
        dropped: Dict[str, int] = {}
        for inter in self.intersections:
            key = "&".join(inter)
            cells, n_dropped = self.fitted_[key]
            dropped[key] = n_dropped
            index = {cell: i for i, cell in enumerate(cells)}
            per = [group_ids[a].tolist() for a in inter]
            codes = torch.tensor([index.get(cell, -1) for cell in zip(*per)], dtype=torch.long)
            group_ids[key] = codes
            labels = [tuple(self.fitted_[a][c] for a, c in zip(inter, cell)) for cell in cells]
            colnames = [key + "=" + "&".join(str(x) for x in lab) for lab in labels]
            add(key, "intersection", one_hot_groups(codes, len(cells), dtype), labels, colnames)
        matrix = torch.cat(parts, dim=1) if parts else torch.zeros(n, 0, dtype=dtype)
        return SensitiveAttributes(matrix, blocks, names, group_ids, dropped)

    def fit_transform(self, columns: Mapping[str, Any], dtype: torch.dtype = torch.float32) -> SensitiveAttributes:
        """:meth:`fit` then :meth:`transform` on the same columns."""
        return self.fit(columns).transform(columns, dtype)
