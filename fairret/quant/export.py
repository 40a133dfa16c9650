"""GPTQ-v1 tensors: packing, unpacking, a ``QuantLinear`` that keeps only the packed tensors, and checkpoint reading.

Layout (the one GPTQModel, transformers + optimum, vLLM and AutoGPTQ load as ``quant_method: gptq``,
``checkpoint_format: gptq``):

* ``qweight`` int32 ``(d_in * bits / 32, d_out)``: the codes of each output column as a little-endian bit stream
  along the input dimension (for 2, 4 and 8 bits, ``32 / bits`` codes per word; for 3 bits, 32 codes in 3 words,
  two of them straddling a word boundary);
* ``qzeros`` int32 ``(n_groups, d_out * bits / 32)``: the zero points minus one (the v1 convention), packed along
  the output dimension the same way;
* ``scales`` float16 ``(n_groups, d_out)``; ``g_idx`` int32 ``(d_in,)``: the group of every input column;
* the weight is ``scale * (code - zero)`` with ``zero = stored + 1``.

A zero point must lie in ``[1, 2^bits]`` to be stored: :class:`~fairret.quant.gptq.Quantizer` never chooses 0 (see
its docstring), and :func:`pack_layer` refuses one, so every reader, wrapping or not, word-level or per field,
decodes the same weights (tested against independent readers of both kinds).

Example:
    >>> import torch
    >>> codes = torch.randint(0, 8, (64, 6), dtype=torch.int32)
    >>> packed = pack_rows(codes, 3)
    >>> packed.shape, torch.equal(unpack_rows(packed, 3), codes)
    (torch.Size([6, 6]), True)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .gptq import GPTQResult

__all__ = ["PACKABLE_BITS", "packing_problem", "pack_rows", "unpack_rows", "pack_layer", "unpack_layer", "dequantize",
           "QuantLinear", "atomic_folder", "read_quantization_config", "read_checkpoint"]

#: Bit widths the GPTQ-v1 format (and its kernels) can hold.
PACKABLE_BITS = (2, 3, 4, 8)
_PACKED = ("qweight", "qzeros", "scales", "g_idx")


def packing_problem(bits: int, d_out: int, d_in: int) -> Optional[str]:
    """Why GPTQ-v1 cannot hold a ``(d_out, d_in)`` layer of ``bits``-bit codes, or None when it can: the format
    holds :data:`PACKABLE_BITS` codes packed in whole 32-bit words along both dimensions (``qweight`` along
    ``d_in``, ``qzeros`` along ``d_out``).

    Example:
        >>> packing_problem(4, 64, 128) is None
        True
        >>> packing_problem(5, 64, 128)
        'GPTQ-v1 checkpoints hold (2, 3, 4, 8)-bit codes, not 5; quantize with one of those to export'
        >>> packing_problem(3, 64, 100)
        'at 3 bits GPTQ-v1 packs each dimension in whole 32-bit words (a multiple of 32 codes), but d_in = 100'
    """
    if bits not in PACKABLE_BITS:
        return _unpackable_bits(bits)
    odd = [f"{name} = {n}" for name, n in (("d_in", d_in), ("d_out", d_out)) if (n * bits) % 32]
    if odd:
        return (f"at {bits} bits GPTQ-v1 packs each dimension in whole 32-bit words (a multiple of "
                f"{32 // math.gcd(32, bits)} codes), but {' and '.join(odd)}")
    return None


def _unpackable_bits(bits: int) -> str:
    return f"GPTQ-v1 checkpoints hold {PACKABLE_BITS}-bit codes, not {bits}; quantize with one of those to export"


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(_unpackable_bits(bits))


def _layout(bits: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each of the 32 codes of one ``bits``-word cycle lies: word index, bit offset, and whether it spills
    into the next word."""
    pos = torch.arange(32, dtype=torch.int64) * bits
    word, off = pos // 32, pos % 32
    return word, off, off + bits > 32


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``(rows, cols)`` codes along the rows into int32 words ``(rows * bits / 32, cols)`` (bit stream)."""
    _check_bits(bits)
    rows, cols = codes.shape
    if (rows * bits) % 32:
        raise ValueError(f"Cannot pack {rows} rows of {bits}-bit codes into whole 32-bit words")
    c = codes.to(torch.int64) & ((1 << bits) - 1)
    pad = -rows % 32  # a whole number of 32-code cycles (the padding codes land past the last word)
    c = torch.cat([c, c.new_zeros(pad, cols)]).reshape(-1, 32, cols)
    words = c.new_zeros(c.shape[0], bits + 1, cols)
    word, off, spill = _layout(bits)
    for k, (j, o, s) in enumerate(zip(word.tolist(), off.tolist(), spill.tolist())):
        words[:, j] |= (c[:, k] << o) & 0xFFFFFFFF
        if s:
            words[:, j + 1] |= c[:, k] >> (32 - o)
    words = words[:, :bits].reshape(-1, cols)[: rows * bits // 32]
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int, rows: Optional[int] = None) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: the first ``rows`` (default: all) codes ``(rows, cols)`` as int32."""
    _check_bits(bits)
    n_words, cols = packed.shape
    mask = (1 << bits) - 1
    if 32 % bits == 0:  # whole codes per word: shift and mask (arithmetic shifts keep the low bits right)
        shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
        out = ((packed.to(torch.int32).unsqueeze(1) >> shifts[:, None]) & mask).reshape(-1, cols)
    else:  # 3 bits: 32 codes in 3 words, two of them straddling a boundary
        pad = -n_words % bits
        w = packed.to(torch.int64) & 0xFFFFFFFF
        w = torch.cat([w, w.new_zeros(pad, cols)]).reshape(-1, bits, cols)
        word, off, spill = (t.to(packed.device) for t in _layout(bits))
        nxt = (word + 1).clamp_max(bits - 1)
        lo = w[:, word] >> off[:, None]
        hi = (w[:, nxt] << torch.where(spill, 32 - off, 0)[:, None]) * spill[:, None]
        out = ((lo | hi) & mask).reshape(-1, cols).to(torch.int32)
    total = n_words * 32 // bits
    return out[: total if rows is None else rows]


def pack_layer(result: GPTQResult) -> Dict[str, torch.Tensor]:
    """``qweight``, ``qzeros``, ``scales``, ``g_idx`` of a quantized layer (see the module docstring).

    Raises:
        ValueError: a bit width GPTQ-v1 cannot hold, dimensions that do not fill whole words (both:
            :func:`packing_problem`), or a zero point outside ``[1, 2^bits]`` (v1 stores ``zero - 1`` in ``bits``
            bits).
    """
    problem = packing_problem(result.bits, *result.qweight.shape)
    if problem is not None:
        raise ValueError(problem)
    zeros = result.zeros.round().to(torch.int64)
    if zeros.numel() and (int(zeros.min()) < 1 or int(zeros.max()) > 1 << result.bits):
        raise ValueError(f"GPTQ-v1 stores zero points in [1, {1 << result.bits}] (as zero - 1 in {result.bits} bits), "
                         f"but this layer has zeros in [{int(zeros.min())}, {int(zeros.max())}]; fairret's Quantizer "
                         f"keeps them there")
    return {
        "qweight": pack_rows(result.qweight.T.contiguous(), result.bits),
        "qzeros": pack_rows(zeros - 1, result.bits).T.contiguous(),  # packed along d_out
        "scales": result.scales.T.contiguous().to(torch.float16),
        "g_idx": result.g_idx.to(torch.int32).contiguous(),
    }


def _stored_zeros(qzeros: torch.Tensor, bits: int, d_out: int) -> torch.Tensor:
    """The zero points ``(n_groups, d_out)`` of packed v1 ``qzeros``: stored value + 1 (in ``[1, 2^bits]``)."""
    return unpack_rows(qzeros.T, bits, d_out).T + 1


def unpack_layer(tensors: Mapping[str, torch.Tensor], bits: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
    """``(codes (d_out, d_in), zeros (d_out, n_groups), scales (d_out, n_groups) float16, g_idx (d_in,))``; zeros
    are the stored values plus one, as v1 defines them (in ``[1, 2^bits]``)."""
    g_idx = tensors["g_idx"].to(torch.int32)
    d_in, d_out = g_idx.shape[0], tensors["scales"].shape[1]
    codes = unpack_rows(tensors["qweight"], bits, d_in).T.contiguous()
    zeros = _stored_zeros(tensors["qzeros"], bits, d_out).T.contiguous()
    return codes, zeros, tensors["scales"].T.contiguous(), g_idx


def _dequant_cols(codes_t: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """``scale * (code - zero)`` for input columns: ``codes_t`` ``(k, d_out)``, ``zeros``/``scales`` per group
    ``(n_groups, d_out)``, ``g`` the columns' groups. ``code - zero`` is an integer below 2^9, exact in every float
    dtype; the product is rounded once (exact in float32: a float16 scale times such an integer)."""
    g = g.long()
    return scales.to(torch.float16).to(dtype)[g] * (codes_t.to(dtype) - zeros.to(dtype)[g])


def dequantize(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``scale * (code - zero)`` a checkpoint describes, ``(d_out, d_in)``: scales are rounded to float16
    as stored, then everything is computed in ``dtype``."""
    return _dequant_cols(codes.T, zeros.T, scales.T, g_idx, dtype).T


class QuantLinear(torch.nn.Module):
    """A linear layer that keeps only its GPTQ-v1 tensors (``qweight``, ``qzeros``, ``scales``, ``g_idx`` and the
    bias, as buffers: about 1/7 of float32 at 4 bits, group 128) and dequantizes ``tile`` input columns at a time
    in ``forward`` (about 4 MB of float weights at a time by default), accumulating their products; no float weight
    is kept. Computes in the input's dtype (float32 for integer inputs).

    Args:
        tensors: ``qweight``, ``qzeros``, ``scales``, ``g_idx`` of one layer (see the module docstring); used as
            given, not copied.
        bits: 2, 3, 4 or 8.
        bias: ``(d_out,)`` or None.
        tile: input columns dequantized at a time (a multiple of 32; default: about 2^20 weights a tile).

    ``.to(dtype)`` and ``.half()`` leave ``scales`` in float16 (the stored values) and move it with the module.

    Example:
        >>> import torch
        >>> from fairret.quant.gptq import GPTQResult
        >>> codes = torch.randint(0, 16, (8, 64), dtype=torch.int32)
        >>> res = GPTQResult(None, codes, torch.full((8, 2), 0.5), torch.full((8, 2), 8.0),
        ...                  torch.arange(64) // 32, 4, 32, False, False)
        >>> lin = QuantLinear(pack_layer(res), bits=4)
        >>> lin(torch.ones(1, 64)).shape, sorted(lin.state_dict())
        (torch.Size([1, 8]), ['g_idx', 'qweight', 'qzeros', 'scales'])
    """

    # buffers (register_buffer), declared so that the checker knows their type
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bias: Optional[torch.Tensor]

    def __init__(self, tensors: Mapping[str, torch.Tensor], bits: int, bias: Optional[torch.Tensor] = None,
                 tile: Optional[int] = None):
        super().__init__()
        _check_bits(bits)
        missing = [k for k in _PACKED if k not in tensors]
        if missing:
            raise ValueError(f"QuantLinear needs the tensors {list(_PACKED)}, but {missing} are missing")
        qweight, qzeros, scales, g_idx = (tensors[k] for k in _PACKED)
        d_in, (n_groups, d_out) = g_idx.shape[0], scales.shape
        expect = {"qweight": (d_in * bits // 32, d_out), "qzeros": (n_groups, d_out * bits // 32)}
        for k, shape in expect.items():
            if tuple(tensors[k].shape) != shape or tensors[k].dtype != torch.int32:
                raise ValueError(f"Expected `{k}` int32 of shape {shape} for {d_in} inputs, {d_out} outputs, "
                                 f"{n_groups} groups at {bits} bits, but got {tensors[k].dtype} "
                                 f"{tuple(tensors[k].shape)}")
        if (d_in * bits) % 32 or (d_out * bits) % 32:
            raise ValueError(f"{d_in} inputs and {d_out} outputs of {bits}-bit codes do not fill whole 32-bit words")
        if d_in and (int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups):
            raise ValueError(f"`g_idx` must hold groups in [0, {n_groups}), but holds [{int(g_idx.min())}, "
                             f"{int(g_idx.max())}]")
        if bias is not None and tuple(bias.shape) != (d_out,):
            raise ValueError(f"Expected `bias` of shape ({d_out},), but got {tuple(bias.shape)}")
        self.register_buffer("qweight", qweight)
        self.register_buffer("qzeros", qzeros)
        self.register_buffer("scales", scales.to(torch.float16))
        self.register_buffer("g_idx", g_idx.to(torch.int32))
        self.register_buffer("bias", bias)
        self.bits, self.in_features, self.out_features = bits, d_in, d_out
        if tile is None:
            tile = max(32, (1 << 20) // max(d_out, 1) // 32 * 32)
        if tile <= 0 or tile % 32:
            raise ValueError(f"Expected argument `tile` to be a positive multiple of 32, but got {tile!r}")
        self.tile = tile

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"groups={self.scales.shape[0]}, bias={self.bias is not None}")

    def _apply(self, fn, recurse=True):
        scales = self.scales
        super()._apply(fn, recurse)
        if self.scales.dtype != torch.float16:  # a dtype cast: keep the stored float16 scales (moved only)
            self.scales = scales.to(self.scales.device)
        return self

    def _columns(self, c0: int, c1: int, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weights of input columns ``c0:c1``, ``(c1 - c0, d_out)``."""
        w0, w1 = c0 * self.bits // 32, c1 * self.bits // 32
        codes = unpack_rows(self.qweight[w0:w1], self.bits, c1 - c0)
        return _dequant_cols(codes, zeros, self.scales, self.g_idx[c0:c1], dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (``out_features x in_features``, float32), built on each access (not kept)."""
        zeros = _stored_zeros(self.qzeros, self.bits, self.out_features)
        return self._columns(0, self.in_features, zeros, torch.float32).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        x2 = x.reshape(-1, self.in_features).to(dtype)
        out = x2.new_zeros(x2.shape[0], self.out_features)
        zeros = _stored_zeros(self.qzeros, self.bits, self.out_features)
        for c0 in range(0, self.in_features, self.tile):
            c1 = min(c0 + self.tile, self.in_features)
            out.addmm_(x2[:, c0:c1], self._columns(c0, c1, zeros, dtype))
        if self.bias is not None:
            out += self.bias.to(dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


@contextlib.contextmanager
def atomic_folder(directory: Any):
    """Yield a new temporary folder beside ``directory``; when the block ends without error it becomes
    ``directory`` (an existing folder of that name is replaced), else it is removed. Readers never see a half
    written checkpoint."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_quantization_config(directory: Any) -> Dict[str, Any]:
    """The ``quantization_config`` of a GPTQ-v1 checkpoint folder (from ``config.json``, else
    ``quantize_config.json``), checked.

    Raises:
        FileNotFoundError: no such folder. ValueError: not a GPTQ checkpoint, another checkpoint format than v1,
            or a bit width other than 2, 3, 4 or 8.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"No checkpoint folder at {str(d)!r}")
    qc = None
    if (d / "config.json").is_file():
        qc = json.loads((d / "config.json").read_text()).get("quantization_config")
    if qc is None and (d / "quantize_config.json").is_file():
        qc = json.loads((d / "quantize_config.json").read_text())
    if not isinstance(qc, dict) or str(qc.get("quant_method", "gptq")).lower() != "gptq" or "bits" not in qc:
        raise ValueError(f"{str(d)!r} is not a GPTQ checkpoint: expected a config.json whose quantization_config has "
                         f"quant_method 'gptq' and bits (or a quantize_config.json), but found "
                         f"{'no quantization_config' if qc is None else qc}")
    fmt = str(qc.get("checkpoint_format", qc.get("format", "gptq"))).lower()
    if fmt != "gptq":
        raise ValueError(f"{str(d)!r} is a {fmt!r} checkpoint; fairret reads GPTQ-v1 ('gptq') checkpoints")
    if qc["bits"] not in PACKABLE_BITS:
        raise ValueError(f"{str(d)!r} holds {qc['bits']}-bit codes; fairret reads GPTQ checkpoints of "
                         f"{', '.join(map(str, PACKABLE_BITS))} bits")
    return qc


def read_checkpoint(directory: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(tensors, quantization_config)`` of a GPTQ-v1 checkpoint folder: every tensor of its safetensors file(s)
    (one file or the shards listed in ``model.safetensors.index.json``), checked as in
    :func:`read_quantization_config`.

    Warns when a zero point is ``2^bits`` (stored as all ones): readers disagree on such a group (this one and
    AutoGPTQ-style kernels read ``2^bits``; GPTQModel's word-level conversion carries into the neighbouring zero),
    and checkpoints written before fairret kept zero points in range meant 0 there.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    qc = read_quantization_config(d)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{str(d)!r} has a GPTQ config but no model.safetensors (nor an index of shards)")
    tensors: Dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(d / f)))
    bits, top = qc["bits"], (1 << qc["bits"]) - 1
    odd = [k[: -len(".qzeros")] for k, v in tensors.items() if k.endswith(".qzeros") and
           bool((unpack_rows(v.T, bits) == top).any())]
    if odd:
        warnings.warn(f"{len(odd)} layers of {str(d)!r} have zero points stored as all ones (zero = {1 << bits}), "
                      f"e.g. {odd[0]}: readers disagree on this value (read here as {1 << bits}); re-quantize with "
                      f"fairret to get zero points every reader decodes alike", stacklevel=2)
    return tensors, qc
