"""The compute floor of ``python -m fairret.quant --model smollm2`` (``bench_quant.py --part floor``).

Counts the arithmetic each phase of the command line's run must do on SmolLM2-135M with its default data (the
StereoSet calibration half, the evaluation half, 1,000 intersentence items, 100 BoolQ passages, 300 HellaSwag
items), as the code batches it, and divides by this machine's matrix-product rate measured in the same run on the
model's own shapes. The tokens are counted by running the real batching and packing code with the model's
forward replaced by a counter, so padding and shared prefixes are counted as the code leaves them:

- a forward costs ``2 · (linear weights) + 4 · layers · (attended positions) · hidden`` FLOPs a token (the
  output layer only at scored positions, as :mod:`fairret.quant.evaluate` runs it);
- the calibration runs every block twice over the calibration tokens, padding included (once to collect the
  layers' inputs, once through the quantized block for the next one), and its Hessians cost ``2 · d_in²`` a real
  token per group of layers sharing an input (the pairs' sums and differences cost together what ``H`` alone
  does);
- the GPTQ column loop costs about ``2 · d_out · d_in²`` a layer (the lazy-batch updates), its Cholesky
  factorisations ``d_in³ / 3``.

The floor is what a perfectly efficient run at the measured rate would take; the ratio of a measured phase
time to it is the overhead left (Python, small operations, memory traffic).
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any, Dict, List

import torch

from fairret.quant import evaluate as ev
from fairret.quant.evaluate import EvalData, evaluate_causal, load_hellaswag, load_passages, load_stereoset
from fairret.quant.loading import load_model
from fairret.quant.model import linear_layers, pair_batches
from fairret.quant.pairs import split_pairs


def matmul_rate(shapes, reps: int = 5) -> float:
    """Best-of-``reps`` float32 GFLOP/s over the given (m, k, n) products."""
    flops, best = 0.0, 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t)
        flops += 2 * m * k * n
        best += min(ts)
    return flops / best / 1e9


class _Counter:
    """Replaces the scorer's forward: records the batch shapes and the scored positions."""

    def __init__(self):
        self.rows: List[Dict[str, int]] = []
        self.real = 0

    def __call__(self, scorer, ids, mask, pos, r, p, target, full=False):
        attended = int(mask.sum()) if mask.dim() == 4 else int(
            sum(int(n) * (int(n) + 1) // 2 for n in mask.sum(-1)))
        self.rows.append({"padded": ids.numel(), "real": self.real, "attended": attended, "scored": int(r.numel())})
        return torch.zeros(target.shape[0], dtype=torch.float64)


def eval_tokens(model, tok, data: EvalData) -> Dict[str, Any]:
    counter = _Counter()
    orig_check, orig_logprobs, orig_run = ev._Scorer.check, ev._Scorer._logprobs, ev._Scorer.run
    ev._Scorer.check = lambda self, *a: None  # the shortcuts' one-off check on a small probe is not counted
    ev._Scorer._logprobs = lambda self, *a: counter(self, *a)

    def run(self, units, seqs, first):
        counter.real = sum(u.length(seqs) for u in units)
        return orig_run(self, units, seqs, first)

    ev._Scorer.run = run
    try:
        out = {}
        for part in ("intrasentence", "intersentence", "passages", "choices"):
            counter.rows.clear()
            kw = {k: [] for k in ("intrasentence", "intersentence", "passages", "choices")}
            kw[part] = getattr(data, part)
            evaluate_causal(model, tok, EvalData(**kw))
            out[part] = {k: sum(r[k] for r in counter.rows) for k in ("padded", "real", "attended", "scored")}
    finally:
        ev._Scorer.check, ev._Scorer._logprobs, ev._Scorer.run = orig_check, orig_logprobs, orig_run
    return out


def run(args) -> str:
    model, tok, _ = load_model("smollm2")
    cfg = model.config
    h, L, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    lin = {n: m for n, m in linear_layers(model).items() if "lm_head" not in n}
    lin_w = sum(m.weight.numel() for m in lin.values())
    head = h * vocab

    items = load_stereoset()
    cal, evl = split_pairs(items, 0.5, 0)
    batches = pair_batches(tok, cal, batch_size=32, max_length=48)
    cal_padded = sum(b["input_ids"].numel() for b in batches)
    cal_real = sum(int(b["attention_mask"].sum()) for b in batches)
    cal_att = sum(int(n) * (int(n) + 1) // 2 for b in batches for n in b["attention_mask"].sum(-1))
    # layer groups sharing an input: q/k/v (d_in = h), o (h), gate/up (h), down (intermediate)
    d_ins = [m.weight.shape[1] for n, m in lin.items() if not n.endswith(("k_proj", "v_proj", "up_proj"))]
    # one product a real token per layer group (the pairs' sums and differences together cost what H alone does)
    hess = sum(2 * d * d for d in d_ins) * cal_real
    cal_fwd = 2 * (2 * lin_w * cal_padded + 4 * L * cal_att * h)
    loop = sum(2 * m.weight.shape[0] * m.weight.shape[1] ** 2 + m.weight.shape[1] ** 3 / 3 for m in lin.values())

    data = EvalData(evl, load_stereoset("intersentence")[:args.intersentence], load_passages()[:args.passages],
                    load_hellaswag()[:args.choices])
    toks = eval_tokens(model, tok, data)
    evf = {k: 2 * lin_w * v["padded"] + 4 * L * v["attended"] * h + 2 * head * v["scored"] for k, v in toks.items()}
    rate = matmul_rate([(4096, h, h), (4096, h, cfg.intermediate_size), (4096, cfg.intermediate_size, h),
                        (2048, h, vocab // 4)])
    eval_total = sum(evf.values())
    phases = [("calibration forwards (2 passes)", cal_fwd), ("Hessians", hess), ("GPTQ column loops", loop),
              ("one quantization", cal_fwd + hess + loop)]
    phases += [(f"evaluation: {k}", v) for k, v in evf.items()]
    phases += [("one evaluation", eval_total),
               ("CLI run (3 evaluations, 2 quantizations)", 3 * eval_total + 2 * (cal_fwd + hess + loop))]
    lines = [f"# Compute floor of `python -m fairret.quant --model smollm2` ({datetime.date.today()}, torch "
             f"{torch.__version__}, {platform.machine()} {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f})\n",
             f"SmolLM2-135M: {L} blocks, hidden {h}, {lin_w / 1e6:.1f} M linear weights in the blocks, output layer "
             f"{head / 1e6:.1f} M. Calibration: {len(cal)} pairs, {cal_real:,} real tokens, {cal_padded:,} with "
             f"padding (batches of 32 pairs sorted by length). Measured float32 matrix-product rate on the model's "
             f"shapes: **{rate:.0f} GFLOP/s** (best of 5; on a busy machine this rate, and so the floor, is "
             f"the share of the machine this run got).\n",
             "| part | tokens (real / with padding / scored) | TFLOP | floor at the measured rate |",
             "|---|---|---|---|"]
    for name, f in phases:
        part = name.split(": ")[-1]
        t = toks.get(part)
        tk = (f"{t['real']:,} / {t['padded']:,} / {t['scored']:,}" if t else
              f"{cal_real:,} / {cal_padded:,} / –" if name.startswith("calib") else "")
        lines.append(f"| {name} | {tk} | {f / 1e12:.2f} | {f / rate / 1e9:.0f} s |")
    return "\n".join(lines) + "\n"
