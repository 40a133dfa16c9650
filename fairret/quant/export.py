"""GPTQ-v1 tensors: packing, unpacking, a dequantizing ``QuantLinear``, and atomic checkpoint writing.

Layout (the one GPTQModel, transformers and vLLM load as ``quant_method: gptq``, checkpoint format v1):

* ``qweight`` int32 ``(d_in * bits / 32, d_out)``: the codes of each output column as a little-endian bit stream
  along the input dimension (for 2, 4 and 8 bits, ``32 / bits`` codes per word; for 3 bits, 32 codes in 3 words);
* ``qzeros`` int32 ``(n_groups, d_out * bits / 32)``: the zero points minus one (the v1 convention), packed along
  the output dimension the same way;
* ``scales`` float16 ``(n_groups, d_out)``; ``g_idx`` int32 ``(d_in,)``: the group of every input column;
* ``quantize_config.json`` with ``bits``, ``group_size``, ``desc_act``, ``sym``, ``checkpoint_format: gptq``.

v1 stores ``zero - 1``: a zero point of 0 is stored as all ones, which :func:`unpack_layer` maps back (``(z + 1) mod
2^bits``); kernels that do not wrap read it as ``2^bits``. An asymmetric group has zero point 0 only when all its
weights are ≥ 0.

Example:
    >>> import torch
    >>> codes = torch.randint(0, 16, (6, 64), dtype=torch.int32)
    >>> packed = pack_rows(codes.T, 4)
    >>> packed.shape, torch.equal(unpack_rows(packed, 4, 64).T, codes)
    (torch.Size([8, 6]), True)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .gptq import GPTQResult

__all__ = ["PACKABLE_BITS", "pack_rows", "unpack_rows", "pack_layer", "unpack_layer", "dequantize", "QuantLinear",
           "write_checkpoint", "read_checkpoint"]

#: Bit widths the GPTQ-v1 format (and its kernels) can hold.
PACKABLE_BITS = (2, 3, 4, 8)


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"GPTQ-v1 checkpoints hold {PACKABLE_BITS}-bit codes, not {bits}; quantize with one of those "
                         f"to export")


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``(rows, cols)`` codes along the rows into int32 words ``(rows * bits / 32, cols)`` (bit stream)."""
    _check_bits(bits)
    rows, cols = codes.shape
    if (rows * bits) % 32:
        raise ValueError(f"Cannot pack {rows} rows of {bits}-bit codes into whole 32-bit words")
    c = codes.to(torch.int64) & ((1 << bits) - 1)
    shifts = torch.arange(bits, dtype=torch.int64, device=codes.device)
    bitsmat = ((c.unsqueeze(-1) >> shifts) & 1).permute(1, 0, 2).reshape(cols, rows * bits)  # per column stream
    words = bitsmat.reshape(cols, -1, 32)
    weights = (torch.ones(32, dtype=torch.int64, device=codes.device) << torch.arange(32, device=codes.device))
    packed = (words * weights).sum(-1)  # values in [0, 2^32)
    packed = torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed)
    return packed.T.contiguous().to(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: ``(rows, cols)`` int32 codes."""
    _check_bits(bits)
    words = packed.to(torch.int64).T & 0xFFFFFFFF  # (cols, n_words)
    bit = (words.unsqueeze(-1) >> torch.arange(32, device=packed.device)) & 1
    stream = bit.reshape(words.shape[0], -1)[:, : rows * bits].reshape(words.shape[0], rows, bits)
    vals = (stream << torch.arange(bits, device=packed.device)).sum(-1)
    return vals.T.contiguous().to(torch.int32)


def pack_layer(result: GPTQResult) -> Dict[str, torch.Tensor]:
    """``qweight``, ``qzeros``, ``scales``, ``g_idx`` of a quantized layer (see the module docstring)."""
    _check_bits(result.bits)
    zeros = (result.zeros.round().to(torch.int64) - 1) & ((1 << result.bits) - 1)  # v1: zero - 1
    return {
        "qweight": pack_rows(result.qweight.T.contiguous(), result.bits),
        "qzeros": pack_rows(zeros, result.bits).T.contiguous(),  # packed along d_out
        "scales": result.scales.T.contiguous().to(torch.float16),
        "g_idx": result.g_idx.to(torch.int32).contiguous(),
    }


def unpack_layer(tensors: Mapping[str, torch.Tensor], bits: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
    """``(codes (d_out, d_in), zeros (d_out, n_groups), scales (d_out, n_groups) float16, g_idx (d_in,))``."""
    g_idx = tensors["g_idx"].to(torch.int64)
    d_in = g_idx.shape[0]
    scales = tensors["scales"]
    d_out = scales.shape[1]
    codes = unpack_rows(tensors["qweight"], bits, d_in).T.contiguous()
    zeros = (unpack_rows(tensors["qzeros"].T.contiguous(), bits, d_out).to(torch.int64) + 1) % (1 << bits)
    return codes, zeros.to(torch.int32), scales.T.contiguous(), g_idx.to(torch.int32)


def dequantize(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``scale * (code - zero)`` a checkpoint describes, ``(d_out, d_in)``: scales are rounded to float16
    as stored, then everything is computed in ``dtype``."""
    g = g_idx.long()
    return scales.to(torch.float16).to(dtype)[:, g] * (codes.to(dtype) - zeros.to(dtype)[:, g])


class QuantLinear(torch.nn.Module):
    """A linear layer stored as GPTQ-v1 tensors; ``forward`` dequantizes (``scale * (code - zero)``) and multiplies."""

    # buffers (register_buffer in __init__), declared for the type checker
    bias: Optional[torch.Tensor]
    _weight: torch.Tensor

    def __init__(self, tensors: Mapping[str, torch.Tensor], bits: int, bias: Optional[torch.Tensor] = None):
        super().__init__()
        codes, zeros, scales, g_idx = unpack_layer(tensors, bits)
        for k, v in tensors.items():
            self.register_buffer(k, v.clone())
        self.bits = bits
        self.register_buffer("bias", None if bias is None else bias.clone())
        self.register_buffer("_weight", dequantize(codes, zeros, scales, g_idx))
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (``out_features x in_features``, float32)."""
        return self._weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self._weight.to(x.dtype), None if self.bias is None else
                                          self.bias.to(x.dtype))


def write_checkpoint(directory: os.PathLike, tensors: Mapping[str, torch.Tensor], quantize_config: Mapping,
                     model_config: Optional[Mapping] = None) -> Path:
    """Write ``model.safetensors``, ``quantize_config.json`` (and ``config.json`` with ``quantization_config``)
    atomically: each file goes to a temporary name in the same folder and is renamed when complete."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    def atomic(name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, out / name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    atomic("model.safetensors", lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p,
                                                    metadata={"format": "pt"}))
    qc = dict(quantize_config)
    atomic("quantize_config.json", lambda p: Path(p).write_text(json.dumps(qc, indent=2) + "\n"))
    if model_config is not None:
        cfg = dict(model_config)
        cfg["quantization_config"] = {"quant_method": "gptq", **qc}
        atomic("config.json", lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    return out


def read_checkpoint(directory: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """``(tensors, quantize_config)`` of a checkpoint written by :func:`write_checkpoint`."""
    from safetensors.torch import load_file

    d = Path(directory)
    return load_file(str(d / "model.safetensors")), json.loads((d / "quantize_config.json").read_text())
