r"""Layer-sequential (Fair-)GPTQ of Hugging Face transformer models, one block at a time.

1. The calibration batches run through the model up to the first transformer block, whose inputs (hidden states
   and keyword arguments such as masks and position embeddings) are captured there.
2. For each block in turn (moved to ``device``, the others stay where they are): hooks on its linear layers
   (``nn.Linear`` and transformers' ``Conv1D``) accumulate :math:`H` over every real token (attention mask 1) and,
   for the layers selected for the fair term, :math:`H_\Delta` from the paired rows of each batch (the first
   ``pairs`` rows are the stereotype sentences, the next ``pairs`` rows their anti-stereotype counterparts,
   padded to one length; differences between aligned tokens when the batch carries an alignment from
   :func:`pair_batches`, else position by position where both sentences have a token), sharing the sum of the
   differences' outer products with :math:`H` (:class:`~fairret.quant.pairs.PairHessians`: no more work than
   :math:`H` alone); every layer is quantized (:func:`fair_gptq_quantize` on the selection, plain
   :func:`gptq_quantize` elsewhere), its weight replaced by the dequantized one (with the float16 scales a
   checkpoint stores), and the block is run again to give the next block's inputs.

The original model is left untouched unless ``inplace=True``. Layers of a block all see the unquantized block's
inputs (GPTQ without "true sequential" ordering inside a block).

Supported block containers: ``model.layers`` (Llama, Mistral), ``model.decoder.layers`` (OPT), ``transformer.h``
(GPT-2), ``encoder.layer`` (BERT), or any ``nn.ModuleList`` with one entry per hidden layer.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import torch

from .._extras import require_extra
from .._progress import progress_bar
from .export import pack_layer, packing_problem
from .gptq import GPTQResult, HessianAccumulator, fair_shift, gptq_quantize
from .pairs import PairHessians, check_pairs

require_extra("quant", "fairret.quant.model", "transformers", "safetensors")

__all__ = ["FAIR_LAYERS", "find_blocks", "select_blocks", "linear_layers", "pair_batches", "QuantizedModel",
           "quantize_model", "quantize_from_hessians", "to_quant_linear", "is_quantized", "save_quantized", "load_quantized"]

#: Default layers of the fair term: attention output and MLP down projections (Llama/Mistral, OPT, GPT-2, BERT).
FAIR_LAYERS = r"(self_attn\.(o_proj|out_proj)|attn\.c_proj|attention\.output\.dense|mlp\.(down_proj|c_proj)|fc2|^output\.dense)$"


def _is_linear(m: torch.nn.Module) -> bool:
    return isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"


def find_blocks(model: torch.nn.Module) -> Tuple[str, torch.nn.ModuleList]:
    """The ``nn.ModuleList`` of transformer blocks (one per hidden layer)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if any(_is_linear(m) for m in mod[0].modules()):
                return name, mod
    raise ValueError(f"Found no list of transformer blocks in {type(model).__name__} (expected an nn.ModuleList with "
                     f"one block per hidden layer, e.g. model.layers or transformer.h)")


def select_blocks(n_blocks: int, which: str = "all") -> List[int]:
    """Indices of the blocks that get the fair term: ``all``, ``lowest`` or ``highest`` (about 10%, at least one)."""
    k = max(1, round(0.1 * n_blocks))
    if which == "all":
        return list(range(n_blocks))
    if which == "lowest":
        return list(range(k))
    if which == "highest":
        return list(range(n_blocks - k, n_blocks))
    raise ValueError(f"Expected argument `fair_blocks` to be 'all', 'lowest' or 'highest', but got {which!r}")


def linear_layers(block: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """The block's linear layers by name (``nn.Linear`` and ``Conv1D``)."""
    return {n: m for n, m in block.named_modules() if n and _is_linear(m)}


def _weight(m: torch.nn.Module) -> torch.Tensor:
    """``(d_out, d_in)`` weight (Conv1D stores ``(d_in, d_out)``)."""
    weight = cast(torch.Tensor, m.weight)  # a linear layer's parameter (Module.__getattr__ is typed Tensor | Module)
    return weight.T if type(m).__name__ == "Conv1D" else weight


def _set_weight(m: torch.nn.Module, w: torch.Tensor) -> None:
    weight = cast(torch.Tensor, m.weight)
    with torch.no_grad():
        weight.copy_((w.T if type(m).__name__ == "Conv1D" else w).to(weight.dtype))


def pair_batches(tokenizer: Any, pairs: Sequence, batch_size: int = 16, max_length: int = 64,
                 align: bool = True, sort: bool = True) -> List[Dict[str, Any]]:
    """Tokenized calibration batches: each holds ``k`` stereotype sentences then their ``k`` anti-stereotype
    counterparts, padded together (``{"input_ids", "attention_mask", "pairs": k}``). With ``sort`` (default) pairs
    of similar token length share a batch (longest first), so that padding, which costs as much compute as real
    tokens, stays small (the StereoSet calibration half with SmolLM2's tokenizer: 11% of the tokens are padding
    instead of 51%). With ``align`` (default) the
    batch also carries the token alignment of its pairs (``"aligned"``, ``"spans"``, see
    :func:`fairret.quant.pairs.align_pairs`) and the differences are taken between aligned tokens; without it,
    position by position where both sentences have a real token."""
    from .pairs import align_pairs

    pairs = check_pairs(pairs)
    if sort:  # pairs of similar length share a batch: little padding (stable, longest first)
        lengths = [max(len(a), len(b)) for a, b in zip(
            tokenizer([p.stereotype for p in pairs], truncation=True, max_length=max_length)["input_ids"],
            tokenizer([p.anti_stereotype for p in pairs], truncation=True, max_length=max_length)["input_ids"])]
        pairs = [pairs[i] for i in sorted(range(len(pairs)), key=lambda i: -lengths[i])]
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        enc = tokenizer([p.stereotype for p in chunk] + [p.anti_stereotype for p in chunk], padding=True,
                        truncation=True, max_length=max_length, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pairs": len(chunk)}
        if align:
            k, ids, m = len(chunk), enc["input_ids"], enc["attention_mask"]
            batch["aligned"], batch["spans"] = align_pairs(ids[:k], ids[k:], m[:k], m[k:])
        out.append(batch)
    return out


class _Stop(Exception):
    pass


@dataclass
class QuantizedModel:
    """The quantized model, its layers' GPTQ-v1 tensors by full module name, the settings, and diagnostics.

    Every linear layer of every block is quantized (``model`` holds its dequantized weights); those GPTQ-v1 cannot
    hold (a bit width other than 2, 3, 4, 8, or dimensions that do not fill whole 32-bit words) are in
    ``unpacked`` with the reason instead of ``packed``, and :func:`to_quant_linear` and :func:`save_quantized`
    refuse a model that has any.
    """

    model: torch.nn.Module
    packed: Dict[str, Dict[str, torch.Tensor]]
    config: Dict[str, Any]
    fair_layers: List[str] = field(default_factory=list)
    #: per fair layer: ``shift`` (relative Frobenius change of the weights by the fair shift), ``pair_energy_fp``
    #: and ``pair_energy_q`` (:math:`\mathrm{tr}(W H_\Delta W^\top)`, the mean squared difference between the
    #: layer's outputs for the two sentences of a pair, before quantization and after)
    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)
    #: with ``keep_hessians``: block -> [(layer names sharing H, H, H_delta or None)]
    hessians: Dict[int, List[Tuple[List[str], torch.Tensor, Optional[torch.Tensor]]]] = field(default_factory=dict)
    #: layers quantized but not packed: full module name -> why GPTQ-v1 cannot hold them
    #: (:func:`~fairret.quant.export.packing_problem`)
    unpacked: Dict[str, str] = field(default_factory=dict)


def _capture_inputs(model, block0, batches, device) -> List[Tuple[tuple, dict]]:
    captured = []

    def hook(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            try:
                model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                      use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError("The first transformer block was not reached by every calibration batch")
    # the block is run several times on these inputs: no key/value cache may grow across the calls
    return [(args, {k: (None if "past_key" in k else v) for k, v in kwargs.items()}) for args, kwargs in captured]


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h, *args[1:]), kwargs
    kw = dict(kwargs)
    kw["hidden_states"] = h
    return args, kw


def _first(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _group_by_input(names: Sequence[str], seen: Dict[str, torch.Tensor]) -> List[List[str]]:
    """The layers grouped by the input tensor they received in one forward (q/k/v share one, gate/up another)."""
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"The block's forward never called the linear layers {missing}: they cannot be calibrated")
    groups: List[List[str]] = []
    for name in names:
        for g in groups:
            if seen[g[0]] is seen[name]:
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


@dataclass
class _Settings:
    bits: int
    group_size: int
    sym: bool
    act_order: bool
    static_groups: bool
    damp: float
    alpha: float
    first_order: bool

    def gptq_kwargs(self) -> Dict[str, Any]:
        return dict(bits=self.bits, group_size=self.group_size, sym=self.sym, act_order=self.act_order,
                    static_groups=self.static_groups, damp=self.damp, scale_dtype=torch.float16)


def _quantize_group(layers: Dict[str, torch.nn.Module], names: Sequence[str], H: torch.Tensor,
                    H_delta: Optional[torch.Tensor], fair: Sequence[str], st: _Settings, prefix: str,
                    packed: Dict[str, Dict[str, torch.Tensor]], unpacked: Dict[str, str],
                    stats: Dict[str, Dict[str, float]]) -> None:
    """Quantize layers that share ``H`` as one stacked matrix (GPTQ's rows are independent given ``H``): the fair
    shift first on the layers in ``fair``, then one rounding loop; write the dequantized weights into the layers,
    their GPTQ-v1 tensors into ``packed`` (or, where the format cannot hold them, the reason into ``unpacked``) and
    the fair layers' diagnostics into ``stats``. A layer the format can hold but :func:`pack_layer` refuses raises
    ``ValueError`` naming it."""
    if fair and H_delta is None:
        raise ValueError(f"Expected `H_delta` for the fair layers {list(fair)}, but got None")
    Ws = []
    for name in names:
        W = _weight(layers[name]).detach().to(torch.float64)
        if name in fair and H_delta is not None:
            shifted = fair_shift(W, H, H_delta, st.alpha, st.first_order, st.damp)
            stats[f"{prefix}.{name}"] = {"shift": float((shifted - W).norm() / W.norm().clamp_min(1e-30))}
            W = shifted
        Ws.append(W)
    res = gptq_quantize(torch.cat(Ws), H, **st.gptq_kwargs())
    start = 0
    for name, W in zip(names, Ws):
        stop = start + W.shape[0]
        part = GPTQResult(res.weight[start:stop], res.qweight[start:stop], res.scales[start:stop],
                          res.zeros[start:stop], res.g_idx.clone(), res.bits, res.group_size, res.sym, res.act_order)
        start = stop
        full = f"{prefix}.{name}"
        problem = packing_problem(part.bits, *part.qweight.shape)
        if problem is not None:  # the weights stay usable in the model; only the checkpoint cannot hold them
            unpacked[full] = problem
        else:
            try:
                packed[full] = pack_layer(part)
            except ValueError as e:  # e.g. a zero point outside [1, 2^bits]: never written as something else
                raise ValueError(f"Cannot pack the quantized layer {full!r}: {e}") from e
        if name in fair and H_delta is not None:
            W0 = _weight(layers[name]).detach().to(torch.float64)
            Hd = H_delta.to(torch.float64)
            stats[full]["pair_energy_fp"] = float((W0 @ Hd * W0).sum())
            stats[full]["pair_energy_q"] = float((part.weight @ Hd * part.weight).sum())
        _set_weight(layers[name], part.weight)


@torch.no_grad()
def quantize_model(model: torch.nn.Module, batches: Sequence[Dict[str, Any]], bits: int = 4, group_size: int = 128,
                   alpha: float = 0.0, fair_layers: str = FAIR_LAYERS, fair_blocks: str = "all",
                   first_order: bool = False, sym: bool = False, act_order: bool = False, static_groups: bool = True,
                   damp: float = 0.01, device: Optional[torch.device] = None, inplace: bool = False,
                   progress: bool = True, desc: Optional[str] = None, product_dtype: torch.dtype = torch.float32,
                   keep_hessians: bool = False) -> QuantizedModel:
    r"""(Fair-)GPTQ every linear layer of every transformer block (see the module docstring).

    Args:
        model: a Hugging Face model (causal LM or encoder).
        batches: calibration batches ``{"input_ids", "attention_mask", "pairs"}`` (see :func:`pair_batches`);
            ``pairs = 0`` for a batch without pairs (it only adds to ``H``). With ``"aligned"`` (and ``"spans"``)
            the pair differences are taken between aligned tokens, else position by position.
        bits, group_size, sym, act_order, static_groups, damp: GPTQ settings (``group_size=-1``: per channel).
            Scales are rounded to float16 (what the checkpoint stores) when they are chosen, so GPTQ's error
            compensation sees the stored weights.
        alpha: weight of the fair term (0: plain GPTQ).
        fair_layers: regular expression on the layer name inside a block selecting the layers with the fair term.
        fair_blocks: ``all``, ``lowest`` or ``highest`` blocks get the fair term.
        first_order: use the first-order shift.
        device: where each block runs (default: the model's device).
        inplace: quantize ``model`` itself instead of a copy.
        progress: show a progress bar over blocks, labelled ``desc``.
        product_dtype: dtype of the Hessians' outer products (float32: twice as fast on CPUs; they are summed in
            float64, see :class:`~fairret.quant.gptq.HessianAccumulator`).
        keep_hessians: keep every layer group's :math:`H` (and, with paired batches, :math:`H_\Delta`) in
            ``QuantizedModel.hessians`` (float64, on the CPU), for :func:`quantize_from_hessians`.

    Layers that receive the same input tensor (Llama's q/k/v projections, gate/up projections) share one Hessian
    and are quantized as one stacked matrix: the same result as one at a time, for the cost of one.
    """
    if not batches:
        raise ValueError("Expected at least one calibration batch, but got none")
    for i, b in enumerate(batches):
        k, n = int(b.get("pairs", 0)), b["input_ids"].shape[0]
        if k < 0 or 2 * k > n:
            raise ValueError(f"Batch {i} declares {k} pairs but holds {n} sentences (a pair batch holds the k "
                             f"stereotype rows then the k anti-stereotype rows)")
    has_pairs = any(int(b.get("pairs", 0)) for b in batches)
    if alpha > 0 and not has_pairs:
        raise ValueError("alpha > 0 needs paired batches (pairs > 0), but no batch declares pairs")
    pattern = re.compile(fair_layers)
    st = _Settings(bits, group_size, sym, act_order, static_groups, damp, alpha, first_order)
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    device = device or next(model.parameters()).device
    prefix, blocks = find_blocks(model)
    fair_idx = set(select_blocks(len(blocks), fair_blocks)) if alpha > 0 else set()
    inputs = _capture_inputs(model, blocks[0], batches, device)
    hidden = [_hidden(a, k) for a, k in inputs]
    masks = [b["attention_mask"].to(device).bool() for b in batches]
    packed: Dict[str, Dict[str, torch.Tensor]] = {}
    unpacked: Dict[str, str] = {}
    stats: Dict[str, Dict[str, float]] = {}
    kept: Dict[int, List[Tuple[List[str], torch.Tensor, Optional[torch.Tensor]]]] = {}
    chosen: List[str] = []
    bar = progress_bar(len(blocks), (desc or ("Fair-GPTQ" if alpha > 0 else "GPTQ")) if progress else None, "block")
    for bi, block in enumerate(blocks):
        home = next(block.parameters()).device
        block.to(device)
        layers = linear_layers(block)
        fair_names = [n for n in layers if bi in fair_idx and pattern.search(n)]
        seen: Dict[str, torch.Tensor] = {}

        def make_hook(name):
            def hook(module, args, output):
                seen[name] = args[0]
            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
        groups: List[List[str]] = []
        accs: List[Any] = []
        try:
            for bn, ((args, kwargs), h, m, b) in enumerate(zip(inputs, hidden, masks, batches)):
                a, kw = _with_hidden(args, kwargs, h)
                block(*a, **kw)
                if not groups:
                    groups = _group_by_input(list(layers), seen)
                    accs = [(PairHessians if has_pairs and (keep_hessians or set(g) & set(fair_names)) else
                             HessianAccumulator)(_weight(layers[g[0]]).shape[1], device, product_dtype)
                            for g in groups]
                pairs = int(b.get("pairs", 0))
                for g, acc in zip(groups, accs):
                    x = seen[g[0]]
                    if any(seen.get(n) is not x for n in g[1:]):
                        raise RuntimeError(f"Layers {g} shared their input in the first batch but not in batch {bn}")
                    if x.shape[:-1] != m.shape:  # some blocks (OPT's MLP) flatten (B, T, d) to (B*T, d)
                        x = x.reshape(*m.shape, x.shape[-1])
                    if pairs and isinstance(acc, PairHessians):
                        acc.add_batch(x, m, pairs, b.get("aligned"), b.get("spans"))
                    else:
                        acc.add(x, m)
                seen.clear()
        finally:
            for hd in handles:
                hd.remove()
        for g, acc in zip(groups, accs):
            H = acc.H
            Hd = acc.H_delta if isinstance(acc, PairHessians) else None
            fair = [n for n in g if n in fair_names]
            _quantize_group(layers, g, H, Hd, fair, st, f"{prefix}.{bi}", packed, unpacked, stats)
            chosen += [f"{prefix}.{bi}.{n}" for n in fair]
            if keep_hessians:
                kept.setdefault(bi, []).append((list(g), H.cpu(), None if Hd is None else Hd.cpu()))
        del accs
        nxt = []
        for (args, kwargs), h in zip(inputs, hidden):
            a, kw = _with_hidden(args, kwargs, h)
            nxt.append(_first(block(*a, **kw)))
        hidden = nxt
        block.to(home)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _result(QuantizedModel(model, packed, _config(st, fair_layers, fair_blocks), chosen, stats, kept,
                                  unpacked))


def _config(st: _Settings, fair_layers: str, fair_blocks: str) -> Dict[str, Any]:
    """The ``quantization_config`` of a checkpoint: the keys GPTQ readers (transformers + optimum, GPTQModel,
    AutoGPTQ, vLLM) read at the top, Fair-GPTQ's settings under ``meta``. Layers of a block are quantized from the
    unquantized block's inputs (``true_sequential: false``)."""
    from .. import __version__

    return {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": st.bits, "group_size": st.group_size,
            "desc_act": bool(st.act_order), "static_groups": bool(st.static_groups), "sym": bool(st.sym),
            "true_sequential": False, "damp_percent": st.damp,
            "meta": {"quantizer": [f"fairret-plus:{__version__}"],
                     "fair_gptq": {"alpha": st.alpha, "layers": fair_layers, "blocks": fair_blocks,
                                   "first_order": bool(st.first_order)}}}


@torch.no_grad()
def quantize_from_hessians(model: torch.nn.Module, hessians: Dict[int, List[Tuple[List[str], torch.Tensor,
                                                                                  Optional[torch.Tensor]]]],
                           bits: int = 4, group_size: int = 128, alpha: float = 0.0, fair_layers: str = FAIR_LAYERS,
                           fair_blocks: str = "all", first_order: bool = False, sym: bool = False,
                           act_order: bool = False, static_groups: bool = True, damp: float = 0.01,
                           progress: bool = False, desc: Optional[str] = None,
                           memo: Optional[Dict[Any, Any]] = None) -> QuantizedModel:
    r"""Quantize a copy of ``model`` with Hessians kept by an earlier :func:`quantize_model` run
    (``keep_hessians=True``), without running the model: for sweeps over ``alpha``, layers and blocks.

    An approximation of :func:`quantize_model` with these settings: each block's :math:`H` and :math:`H_\Delta`
    are those of the run that kept them, whose inputs came through *that* run's quantized earlier blocks (exact for
    the first block, and for every block when the settings are the kept run's).

    ``memo``: a dict kept across calls with the same ``model`` and ``hessians``; a layer group quantized with the
    same settings (the fair ones only where the group gets the fair term) is taken from it instead of being
    quantized again, so a sweep over α, layers and blocks costs one rounding loop per distinct group setting.
    """
    pattern = re.compile(fair_layers)
    st = _Settings(bits, group_size, sym, act_order, static_groups, damp, alpha, first_order)
    model = copy.deepcopy(model).eval()
    prefix, blocks = find_blocks(model)
    fair_idx = set(select_blocks(len(blocks), fair_blocks)) if alpha > 0 else set()
    packed: Dict[str, Dict[str, torch.Tensor]] = {}
    unpacked: Dict[str, str] = {}
    stats: Dict[str, Dict[str, float]] = {}
    chosen: List[str] = []
    bar = progress_bar(len(blocks), (desc or "quantize from kept Hessians") if progress else None, "block")
    for bi, block in enumerate(blocks):
        if bi not in hessians:
            raise ValueError(f"No kept Hessians for block {bi}")
        layers = linear_layers(block)
        for names, H, Hd in hessians[bi]:
            fair = [n for n in names if bi in fair_idx and pattern.search(n)]
            if fair and Hd is None:
                raise ValueError(f"alpha > 0 on {fair} needs the kept H_delta (keep Hessians from paired batches)")
            here = f"{prefix}.{bi}"
            key = (bi, tuple(names), tuple(fair), bits, group_size, sym, act_order, static_groups, damp) + (
                (alpha, first_order) if fair else ())
            if memo is not None and key in memo:
                weights, part_packed, part_unpacked, part_stats = memo[key]
                for n, w in weights.items():
                    _set_weight(layers[n], w)
            else:
                part_packed, part_unpacked, part_stats = {}, {}, {}
                _quantize_group(layers, names, H.double(), None if Hd is None else Hd.double(), fair, st, here,
                                part_packed, part_unpacked, part_stats)
                if memo is not None:
                    memo[key] = ({n: _weight(layers[n]).detach().clone() for n in names}, part_packed,
                                 part_unpacked, part_stats)
            packed.update(part_packed)
            unpacked.update(part_unpacked)
            stats.update(part_stats)
            chosen += [f"{here}.{n}" for n in fair]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _result(QuantizedModel(model, packed, _config(st, fair_layers, fair_blocks), chosen, stats,
                                  unpacked=unpacked))


def _unpacked_message(qm: QuantizedModel) -> str:
    name, problem = next(iter(qm.unpacked.items()))
    return (f"{len(qm.unpacked)} of the {len(qm.unpacked) + len(qm.packed)} quantized layers cannot be written as "
            f"GPTQ-v1 ({name}: {problem})")


def _result(qm: QuantizedModel) -> QuantizedModel:
    """``qm``, with a warning when some of its layers cannot be packed (so that it is not learnt at save time)."""
    if qm.unpacked:
        warnings.warn(f"{_unpacked_message(qm)}; the model holds their dequantized weights, but to_quant_linear and "
                      f"save_quantized refuse it (QuantizedModel.unpacked lists them)", UserWarning, stacklevel=4)
    return qm


def _quant_linears(model: torch.nn.Module, packed: Dict[str, Dict[str, torch.Tensor]], bits: int
                   ) -> Dict[str, torch.nn.Module]:
    """A :class:`~fairret.quant.export.QuantLinear` for every packed layer of ``model`` (sharing its bias)."""
    from .export import QuantLinear

    def bias(name):
        b = getattr(model.get_submodule(name), "bias", None)
        return None if b is None else b.detach()

    return {name: QuantLinear(t, bits, bias(name)) for name, t in packed.items()}


def _swap(model: torch.nn.Module, modules: Mapping[str, torch.nn.Module]) -> Dict[str, torch.nn.Module]:
    """Put ``modules`` in place by full name; returns the modules they replaced."""
    old = {}
    for name, mod in modules.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old[name] = getattr(parent, leaf)
        setattr(parent, leaf, mod)
    return old


def to_quant_linear(qm: QuantizedModel) -> torch.nn.Module:
    """A copy of ``qm.model`` whose quantized layers are :class:`~fairret.quant.export.QuantLinear` modules (packed
    tensors only, dequantized per tile in ``forward``): the model :func:`save_quantized` writes and
    :func:`load_quantized` returns. The other tensors are shared with ``qm.model``."""
    if qm.unpacked:
        raise ValueError(f"{_unpacked_message(qm)}: no QuantLinear model or checkpoint can hold them")
    modules = _quant_linears(qm.model, qm.packed, qm.config["bits"])
    old = _swap(qm.model, modules)
    try:  # copies of the modules, sharing every tensor (and so the ties between them)
        memo = {id(t): t for t in list(qm.model.parameters()) + list(qm.model.buffers())}
        out = copy.deepcopy(qm.model, memo)
    finally:
        _swap(qm.model, old)
    return out.eval()


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds :class:`~fairret.quant.export.QuantLinear` layers (e.g. from :func:`load_quantized`)."""
    from .export import QuantLinear

    return any(isinstance(m, QuantLinear) for m in model.modules())


def save_quantized(qm: QuantizedModel, directory: Any, tokenizer: Any = None,
                   max_shard_size: Union[int, str] = "2GB") -> Path:
    """Write a GPTQ-v1 checkpoint folder through ``save_pretrained``: every quantized layer's ``qweight``,
    ``qzeros``, ``scales``, ``g_idx`` (and bias) in place of its weight, the model's other tensors (tied weights
    once), ``config.json`` with ``quantization_config`` (see :func:`quantize_model`'s ``config``), the generation
    config, safetensors shards of at most ``max_shard_size``, the tokenizer when given, and
    ``quantize_config.json`` (the same settings, for AutoGPTQ-style readers).

    The folder is written beside its final place and renamed into it when complete (an existing folder of that
    name is replaced). :func:`load_quantized` reads it back; so do transformers with optimum and GPTQModel, and
    vLLM (see the README).
    """
    from .export import atomic_folder

    # a transformers model: config, hf_quantizer and save_pretrained are its own (Module.__getattr__ is typed
    # Tensor | Module)
    model = cast(Any, to_quant_linear(qm))
    qc = dict(qm.config)
    model.config.quantization_config = qc  # the copy's config
    if getattr(model, "hf_quantizer", None) is not None:  # e.g. GGUF: dequantized to float when loaded, and the
        model.hf_quantizer = None  # copy's weights are ours now; its quantizer would refuse to serialize them
    with atomic_folder(directory) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        (Path(tmp) / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory)


def load_quantized(directory: Any, model: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """The model of a GPTQ-v1 checkpoint folder, ready to use (evaluation mode): quantized layers become
    :class:`~fairret.quant.export.QuantLinear` modules that keep only the packed tensors, every other tensor is
    loaded as saved, tied weights are tied again and the generation config is restored. No float copy of the
    quantized layers is ever built: the model is created with empty (meta) parameters and the checkpoint's tensors
    are assigned to it.

    Args:
        directory: the checkpoint folder (:func:`save_quantized`'s, or any GPTQ-v1 checkpoint of a transformers
            architecture).
        model: an instance of the architecture to fill (default: built from ``config.json``'s ``architectures``).

    Raises:
        FileNotFoundError: no such folder. ValueError: not a GPTQ-v1 checkpoint, an unsupported bit width, or
            tensors that do not match the architecture.
    """
    from .export import QuantLinear, read_checkpoint

    tensors, qc = read_checkpoint(directory)
    d = Path(directory)
    if model is None:
        import transformers
        from accelerate import init_empty_weights

        config = transformers.AutoConfig.from_pretrained(str(d))
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the model is built plain; its quantized layers are swapped in below
        archs = getattr(config, "architectures", None) or []
        cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
        if cls is None:
            raise ValueError(f"{str(d)!r}: config.json names no transformers architecture ({archs}); pass `model`")
        with init_empty_weights():
            model = cls(config)
    names = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    if not names:
        raise ValueError(f"{str(d)!r} has a GPTQ config but no quantized layer (no '.qweight' tensor)")
    try:
        modules = {n: QuantLinear({k: tensors.pop(f"{n}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx")},
                                  qc["bits"], tensors.pop(f"{n}.bias", None)) for n in names}
        _swap(model, modules)
    except (KeyError, AttributeError) as e:
        raise ValueError(f"{str(d)!r}: the quantized layers do not match the architecture ({e})") from e
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        cast(Any, model).tie_weights()  # a transformers model's method (Module.__getattr__ is typed Tensor | Module)
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if unexpected or empty:
        raise ValueError(f"Checkpoint {str(d)!r} does not match the architecture: unexpected {unexpected[:5]}, "
                         f"missing {empty[:5]}")
    if (d / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        import transformers

        model.generation_config = transformers.GenerationConfig.from_pretrained(str(d))
    return model.eval()
