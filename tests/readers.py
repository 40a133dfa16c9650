"""Two independent readers of GPTQ-v1 layer tensors, written from the format descriptions (not from fairret's
packer), the way other tools decode a checkpoint.

* :func:`gptqmodel_style`: GPTQModel's load path: the v1 zero points are converted to v2 (zero stored as is) by
  adding one to every field *at the word level* (a constant with a 1 at the start of each field, added to the
  int32 word modulo 2^32; a carry out of an all-ones field runs into its neighbour); 3-bit zeros are converted
  field by field (their fields straddle words). Then the v2 tensors are unpacked by shifting each word by
  ``bits * i`` and masking.
* :func:`autogptq_style`: AutoGPTQ-style kernels: every field is read on its own (for 3 bits bit by bit across the
  word boundary), and the zero point is ``stored + 1`` without wrapping.

Both return the float32 weight ``(d_out, d_in)``: ``scale (float16 -> float32) * (code - zero)`` per input column's
group.
"""
from __future__ import annotations

from typing import Mapping

import torch

WORD = 1 << 32


def _u32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64) % WORD


def _fields_3bit(words: torch.Tensor) -> torch.Tensor:
    """3-bit fields along dim 0 of ``words`` (uint32 values in int64): each run of 3 words holds 32 fields; word 0
    has fields 0-9 at bits 0, 3, ..., 27 and the low two bits of field 10 at 30; word 1 the high bit of field 10 at
    bit 0, fields 11-20 at 1, 4, ..., 28 and the low bit of field 21 at 31; word 2 the high two bits of field 21 at
    0 and fields 22-31 at 2, 5, ..., 29."""
    w = words.reshape(-1, 3, *words.shape[1:])
    w0, w1, w2 = w[:, 0], w[:, 1], w[:, 2]
    out = []
    out += [(w0 >> (3 * i)) & 7 for i in range(10)]
    out.append(((w0 >> 30) & 3) | ((w1 & 1) << 2))
    out += [(w1 >> (1 + 3 * i)) & 7 for i in range(10)]
    out.append(((w1 >> 31) & 1) | ((w2 & 3) << 1))
    out += [(w2 >> (2 + 3 * i)) & 7 for i in range(10)]
    return torch.stack(out, 1).reshape(-1, *words.shape[1:])


def _words_3bit(fields: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_fields_3bit` (fields along dim 0, a multiple of 32)."""
    f = fields.reshape(-1, 32, *fields.shape[1:]).to(torch.int64)
    w0 = sum(f[:, i] << (3 * i) for i in range(10)) + ((f[:, 10] & 3) << 30)
    w1 = (f[:, 10] >> 2) + sum(f[:, 11 + i] << (1 + 3 * i) for i in range(10)) + ((f[:, 21] & 1) << 31)
    w2 = (f[:, 21] >> 1) + sum(f[:, 22 + i] << (2 + 3 * i) for i in range(10))
    return torch.stack([w0, w1, w2], 1).reshape(-1, *fields.shape[1:])


def _shift_unpack(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Fields along dim 0 of uint32 ``words`` for bits dividing 32: word ``r`` holds fields ``r * 32/bits + i`` at
    bit ``bits * i``."""
    per = 32 // bits
    parts = [(words >> (bits * i)) & ((1 << bits) - 1) for i in range(per)]
    return torch.stack(parts, 1).reshape(-1, *words.shape[1:])


def v1_to_v2_zeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQModel's conversion of packed v1 zero points (``zero - 1``) to v2 (``zero``), uint32 words in int64."""
    words = _u32(qzeros)
    if bits == 3:  # field by field: (stored + 1) within the field, as GPTQModel does for 3 bits
        fields = _fields_3bit(words.T)
        return _words_3bit((fields + 1) & 7).T
    one_per_field = sum(1 << (bits * i) for i in range(32 // bits))
    return (words + one_per_field) % WORD  # the word-level add: a carry runs into the next field


def gptqmodel_style(t: Mapping[str, torch.Tensor], bits: int) -> torch.Tensor:
    """The weight GPTQModel's v1 load path (v1 -> v2 conversion, then v2 unpack) decodes."""
    zeros_v2 = v1_to_v2_zeros(t["qzeros"], bits)
    unpack = _fields_3bit if bits == 3 else (lambda w: _shift_unpack(w, bits))
    d_in, d_out = t["g_idx"].shape[0], t["scales"].shape[1]
    codes = unpack(_u32(t["qweight"]))[:d_in]  # (d_in, d_out)
    zeros = unpack(zeros_v2.T)[:d_out].T  # (n_groups, d_out)
    g = t["g_idx"].long()
    return (t["scales"].float()[g] * (codes.float() - zeros.float()[g])).T


def autogptq_style(t: Mapping[str, torch.Tensor], bits: int) -> torch.Tensor:
    """The weight an AutoGPTQ-style kernel decodes: each field read on its own (bit by bit), zero = stored + 1."""
    def fields(words: torch.Tensor, n: int) -> torch.Tensor:  # field k along dim 0: its bits one at a time
        w = _u32(words)
        out = torch.zeros(n, *w.shape[1:], dtype=torch.int64)
        for b in range(bits):
            pos = bits * torch.arange(n) + b  # where bit b of every field lies in the stream
            out |= ((w[pos // 32] >> (pos % 32)[:, None]) & 1) << b
        return out

    d_in, d_out = t["g_idx"].shape[0], t["scales"].shape[1]
    codes = fields(t["qweight"], d_in)
    zeros = fields(t["qzeros"].T, d_out).T + 1
    g = t["g_idx"].long()
    return (t["scales"].float()[g] * (codes.float() - zeros.float()[g])).T
