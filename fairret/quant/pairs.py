r"""Explicit (stereotype, anti-stereotype) pairs and the Fair-GPTQ difference statistic :math:`H_\Delta`.

The published code paired sentences by their position in a batch, which length sorting and length filters silently
break, and let padded positions into the differences. Here pairs are explicit objects, checked up front, and the
difference :math:`\delta_t = x^{(0)}_t - x^{(1)}_t` of a layer's inputs is taken position by position only where
*both* sentences have a real token (both attention masks are 1):
:math:`H_\Delta = \frac{2}{n}\sum \delta\delta^\top` over those positions.

Position by position is right only while the two token sequences stay in step. When the differing words have
different token counts ("a nurse" / "an engineer"), every later position compares unrelated tokens. With
:func:`align_pairs` the differences are taken between *aligned* tokens instead: the common prefix position by
position, the common suffix counted from each sentence's end, the differing spans position by position when they
have the same length, else one difference of the spans' mean inputs.

Example:
    >>> import torch
    >>> acc = PairDeltaAccumulator(3)
    >>> x0, x1 = torch.ones(1, 4, 3), torch.zeros(1, 4, 3)
    >>> acc.add(x0, x1, torch.tensor([[1, 1, 1, 0]]), torch.tensor([[1, 1, 0, 0]]))
    >>> acc.n, acc.H[0, 0].item()
    (2, 2.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .gptq import HessianAccumulator

__all__ = ["SentencePair", "check_pairs", "load_pairs", "PairDeltaAccumulator", "PairHessians", "split_pairs",
           "align_pairs"]


@dataclass(frozen=True)
class SentencePair:
    """A stereotype sentence and its anti-stereotype counterpart (StereoSet intrasentence style)."""

    stereotype: str
    anti_stereotype: str
    bias_type: str = ""


def check_pairs(pairs: Iterable) -> List[SentencePair]:
    """Validate and normalise pairs: ``SentencePair`` or ``(stereotype, anti_stereotype[, bias_type])`` tuples."""
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, SentencePair):
            sp = p
        elif isinstance(p, (tuple, list)) and len(p) in (2, 3):
            sp = SentencePair(*p)
        else:
            raise ValueError(f"Pair {i} must be a SentencePair or a (stereotype, anti_stereotype[, bias_type]) "
                             f"tuple, but got {p!r}")
        for name in ("stereotype", "anti_stereotype"):
            value = getattr(sp, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Pair {i} has an empty or non-string {name}: {value!r}")
        if sp.stereotype == sp.anti_stereotype:
            raise ValueError(f"Pair {i} has identical sentences; its difference would be zero: {sp.stereotype!r}")
        out.append(sp)
    if not out:
        raise ValueError("Expected at least one (stereotype, anti-stereotype) pair, but got none")
    return out


def load_pairs(path) -> List[SentencePair]:
    """Pairs from a file: JSON lines (one object a line) or CSV with a header (by the suffix ``.csv``), with the
    fields ``stereotype`` and ``anti_stereotype`` (or ``anti-stereotype``) and optionally ``bias_type``; checked
    as in :func:`check_pairs`.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "pairs.csv")
        >>> _ = open(f, "w").write("stereotype,anti_stereotype,bias_type\\nHe is strong.,She is strong.,gender\\n")
        >>> load_pairs(f)
        [SentencePair(stereotype='He is strong.', anti_stereotype='She is strong.', bias_type='gender')]

    Raises:
        FileNotFoundError: no such file. ValueError: a row without the two sentences, malformed JSON, or a pair
            :func:`check_pairs` rejects.
    """
    import csv
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No pairs file at {str(p)!r}")
    with open(p, newline="", encoding="utf-8") as f:
        if p.suffix.lower() == ".csv":
            rows = list(enumerate(csv.DictReader(f), start=2))
        else:
            rows = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{str(p)!r} line {n} is not JSON ({e.msg}); expected JSON lines or a "
                                         f".csv file") from None
    pairs = []
    for n, r in rows:
        anti = r.get("anti_stereotype", r.get("anti-stereotype")) if isinstance(r, dict) else None
        if anti is None or r.get("stereotype") is None:
            raise ValueError(f"{str(p)!r} line {n}: expected the fields 'stereotype' and 'anti_stereotype', but "
                             f"got {sorted(r) if isinstance(r, dict) else r!r}")
        pairs.append(SentencePair(r["stereotype"], anti, r.get("bias_type") or ""))
    if not pairs:
        raise ValueError(f"{str(p)!r} holds no pairs")
    return check_pairs(pairs)


def split_pairs(pairs: Sequence[SentencePair], fraction: float = 0.5, seed: int = 0
                ) -> Tuple[List[SentencePair], List[SentencePair]]:
    """A reproducible split of the pairs into calibration and evaluation halves (pairs stay whole)."""
    if not 0 < fraction < 1:
        raise ValueError(f"Expected argument `fraction` in (0, 1), but got {fraction!r}")
    pairs = list(pairs)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(fraction * len(pairs)))
    return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]


def _real(length: int, mask: Optional[torch.Tensor]) -> List[int]:
    """Positions of the real tokens of one row (all ``length`` of them without a mask)."""
    return list(range(length)) if mask is None else torch.nonzero(mask.bool()).flatten().tolist()


def align_pairs(ids0: torch.Tensor, ids1: torch.Tensor, mask0: Optional[torch.Tensor] = None,
                mask1: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token alignment of each pair (row ``b`` of ``ids0`` with row ``b`` of ``ids1``, both ``(B, T)``).

    Returns ``(aligned, spans)``: ``aligned`` ``(M, 3)`` rows ``(b, t0, t1)`` of positions holding corresponding
    tokens (common prefix, common suffix, and equal-length differing spans), ``spans`` ``(S, 5)`` rows
    ``(b, start0, end0, start1, end1)`` of differing spans of unequal length (compared by their mean input); a
    pure insertion (a differing span empty on one side) adds no row. Padding (mask 0) is skipped, so left and
    right padding both work.
    """
    if ids0.shape != ids1.shape or ids0.ndim != 2:
        raise ValueError(f"Expected `ids0` and `ids1` of one shape (B, T), but got {tuple(ids0.shape)} and "
                         f"{tuple(ids1.shape)}")
    aligned: List[Tuple[int, int, int]] = []
    spans: List[Tuple[int, int, int, int, int]] = []
    for b in range(ids0.shape[0]):
        r0 = _real(ids0.shape[1], None if mask0 is None else mask0[b])
        r1 = _real(ids1.shape[1], None if mask1 is None else mask1[b])
        t0, t1 = ids0[b, r0].tolist(), ids1[b, r1].tolist()
        n = min(len(t0), len(t1))
        p = 0
        while p < n and t0[p] == t1[p]:
            p += 1
        q = 0
        while q < n - p and t0[len(t0) - 1 - q] == t1[len(t1) - 1 - q]:
            q += 1
        aligned += [(b, r0[i], r1[i]) for i in range(p)]
        aligned += [(b, r0[len(t0) - q + j], r1[len(t1) - q + j]) for j in range(q)]
        m0, m1 = len(t0) - p - q, len(t1) - p - q
        if m0 == m1:
            aligned += [(b, r0[p + j], r1[p + j]) for j in range(m0)]
        elif m0 > 0 and m1 > 0:
            spans.append((b, r0[p], r0[p + m0 - 1] + 1, r1[p], r1[p + m1 - 1] + 1))
    return (torch.tensor(aligned, dtype=torch.long).reshape(-1, 3),
            torch.tensor(spans, dtype=torch.long).reshape(-1, 5))


def _both_real(x0: torch.Tensor, x1: torch.Tensor, mask0: Optional[torch.Tensor],
               mask1: Optional[torch.Tensor]) -> torch.Tensor:
    """Position-by-position alignment ``(M, 3)`` rows ``(b, t, t)`` where both sentences have a real token."""
    if x0.shape != x1.shape:
        raise ValueError(f"Expected the stereotype and anti-stereotype inputs of a batch of pairs to have the same "
                         f"shape (pad both to one length), but got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if x0.ndim != 3:
        raise ValueError(f"Expected layer inputs of shape (B, T, d), but got {tuple(x0.shape)}")
    b, t, _ = x0.shape
    both = torch.ones(b, t, dtype=torch.bool, device=x0.device)
    for name, m in (("mask0", mask0), ("mask1", mask1)):
        if m is not None:
            if tuple(m.shape) != (b, t):
                raise ValueError(f"Expected `{name}` of shape {(b, t)}, but got {tuple(m.shape)}")
            both &= m.to(x0.device).bool()
    if not both.any():
        raise ValueError("No position is a real token in both sentences of any pair in this batch")
    idx = torch.nonzero(both)
    return torch.stack([idx[:, 0], idx[:, 1], idx[:, 1]], dim=1)


def _pair_rows(x0: torch.Tensor, x1: torch.Tensor, aligned: torch.Tensor, spans: Optional[torch.Tensor],
               dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a0, a1, span_delta)`` in ``dtype``: the inputs at the aligned positions of each side, and one difference
    of mean inputs per unequal differing span."""
    if x0.ndim != 3 or x1.ndim != 3 or x0.shape[0] != x1.shape[0] or x0.shape[2] != x1.shape[2]:
        raise ValueError(f"Expected layer inputs (B, T, d) with one B and d for both sentences, but got "
                         f"{tuple(x0.shape)} and {tuple(x1.shape)}")
    aligned = aligned.to(x0.device)
    a0 = x0[aligned[:, 0], aligned[:, 1]].to(dtype)
    a1 = x1[aligned[:, 0], aligned[:, 2]].to(dtype)
    span = [(x0[b, s0:e0].mean(0) - x1[b, s1:e1].mean(0)).unsqueeze(0)
            for b, s0, e0, s1, e1 in ([] if spans is None else spans.tolist())]
    span_delta = torch.cat(span).to(dtype) if span else a0.new_zeros(0, x0.shape[2])
    if a0.shape[0] + span_delta.shape[0] == 0:
        raise ValueError("No aligned position or differing span in this batch of pairs")
    return a0, a1, span_delta


class PairDeltaAccumulator(HessianAccumulator):
    """:math:`H_\\Delta` from the layer inputs of the two sentences of each pair (``(B, T, d)`` each)."""

    # a pair of inputs where HessianAccumulator.add takes one: the override is incompatible by design
    def add(self, x0: torch.Tensor, x1: torch.Tensor, mask0: Optional[torch.Tensor] = None,  # type: ignore[override]
            mask1: Optional[torch.Tensor] = None) -> None:
        """Add a batch of pairs: row ``b`` of ``x0`` and row ``b`` of ``x1`` are the two sentences of one pair."""
        self.add_aligned(x0, x1, _both_real(x0, x1, mask0, mask1))

    def add_aligned(self, x0: torch.Tensor, x1: torch.Tensor, aligned: torch.Tensor,
                    spans: Optional[torch.Tensor] = None) -> None:
        """Add a batch of pairs by token alignment (see :func:`align_pairs`): one difference per aligned position
        and one per unequal differing span (mean input of each side's span)."""
        a0, a1, span_delta = _pair_rows(x0, x1, aligned, spans, self.product_dtype)
        self.add_rows(torch.cat([a0 - a1, span_delta]))


class PairHessians:
    r""":math:`H` (every real token) and :math:`H_\Delta` (the pairs' differences) of one layer from calibration
    batches that hold pairs, with the matrix products of :math:`H` alone.

    For two aligned inputs :math:`x_0, x_1` with sum :math:`\sigma` and difference :math:`\delta`,
    :math:`x_0x_0^\top + x_1x_1^\top = (\sigma\sigma^\top + \delta\delta^\top)/2`. So the sum of outer products of
    the differences (:math:`H_\Delta`'s) also serves :math:`H`: a batch costs one product over the sums (plus the
    real tokens outside the alignment) and one over the differences, the rows :math:`H` alone needs, and nothing is
    added twice; :attr:`H` combines the two sums on reading. Equal (in float64 rounding) to
    :class:`~fairret.quant.gptq.HessianAccumulator` over every real token plus
    :meth:`PairDeltaAccumulator.add_aligned` (or ``add`` by position without an alignment).

    Example:
        >>> import torch
        >>> acc = PairHessians(3)
        >>> x = torch.stack([torch.ones(2, 3), torch.zeros(2, 3)])  # one pair of 2 tokens: stereotype, then anti
        >>> acc.add_batch(x, torch.ones(2, 2, dtype=torch.bool), pairs=1)
        >>> acc.H[0, 0].item(), acc.H_delta[0, 0].item()
        (1.0, 2.0)
    """

    def __init__(self, columns: int, device: Optional[torch.device] = None,
                 product_dtype: torch.dtype = torch.float64):
        # _h: sums / 2, unaligned tokens, minus spans / 2, and the n of H; _delta: the differences
        self._h = HessianAccumulator(columns, device, product_dtype)
        self._delta = PairDeltaAccumulator(columns, device, product_dtype)

    @property
    def n(self) -> int:
        """Rows (real tokens) in :math:`H`."""
        return self._h.n

    @property
    def H(self) -> torch.Tensor:
        """:math:`H` over every real token added (a new tensor)."""
        if not self._h.n:
            return torch.zeros_like(self._h.S)
        return torch.add(self._h.S, self._delta.S, alpha=0.5).mul_(2.0 / self._h.n)

    @property
    def H_delta(self) -> torch.Tensor:
        r""":math:`H_\Delta` over the pairs' differences added (a new tensor)."""
        return self._delta.H

    def add(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """Add a batch without pairs to :math:`H` only (see :meth:`HessianAccumulator.add`)."""
        self._h.add(x, mask)

    def add_batch(self, x: torch.Tensor, mask: torch.Tensor, pairs: int, aligned: Optional[torch.Tensor] = None,
                  spans: Optional[torch.Tensor] = None) -> None:
        """Add a calibration batch's layer inputs.

        Args:
            x: ``(B, T, d)``: the ``pairs`` stereotype rows, then their anti-stereotype rows, then any unpaired rows.
            mask: ``(B, T)``, true at real tokens.
            pairs: the number of pairs at the top of the batch (``2 * pairs <= B``).
            aligned: ``(M, 3)`` rows ``(pair, t0, t1)`` of aligned real tokens (:func:`align_pairs`); default:
                position by position where both sentences have a real token.
            spans: ``(S, 5)`` unequal differing spans from :func:`align_pairs` (one difference of mean inputs each).
        """
        k = int(pairs)
        if x.ndim != 3 or tuple(mask.shape) != tuple(x.shape[:2]) or not 0 < 2 * k <= x.shape[0]:
            raise ValueError(f"Expected `x` (B, T, d) with 2 * pairs <= B and `mask` (B, T), but got "
                             f"{tuple(x.shape)}, {tuple(mask.shape)} and pairs={pairs!r}")
        mask = mask.to(x.device).bool()
        x0, x1 = x[:k], x[k:2 * k]
        if aligned is None:
            aligned = _both_real(x0, x1, mask[:k], mask[k:2 * k])
        aligned = aligned.to(x.device)
        if not (mask[aligned[:, 0], aligned[:, 1]].all() and mask[k + aligned[:, 0], aligned[:, 2]].all()):
            raise ValueError("Expected `aligned` to pair real tokens only (mask 1 on both sides), but it holds a "
                             "padded position")
        a0, a1, span_delta = _pair_rows(x0, x1, aligned, spans, self._h.product_dtype)
        rest = mask.clone()
        rest[aligned[:, 0], aligned[:, 1]] = False
        rest[k + aligned[:, 0], aligned[:, 2]] = False
        self._h.add_rows(a0 + a1, 0.5, count=2 * a0.shape[0])
        self._h.add_rows(x[rest])
        self._h.add_rows(span_delta, -0.5, count=0)  # the spans enter H_delta's sum, which H reads half of
        self._delta.add_rows(a0 - a1)
        self._delta.add_rows(span_delta)
