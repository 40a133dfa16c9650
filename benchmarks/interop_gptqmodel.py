"""A real peer: our SmolLM2 GPTQ checkpoint loaded by transformers' GPTQ path (optimum + GPTQModel) in its own
virtual environment, compared with fairret's own loader.

    python benchmarks/interop_gptqmodel.py [--ckpt DIR] [--venv .venv-interop] [--tokens 300] [--new-tokens 20]

GPTQModel needs a newer torch (2.14.1) than fairret's environment, so it lives in a separate venv
(``--venv``, created when absent: ``python -m venv`` then ``pip install torch==2.14.1 gptqmodel optimum
transformers accelerate``, which pip takes from this machine's wheel folders; never installed into fairret's
venv). The checkpoint (``--ckpt``, written as in ``bench_quant.py --part load`` when absent) is read there with
``AutoModelForCausalLM.from_pretrained(ckpt, device_map="cpu")`` in float32; here with
``fairret.quant.model.load_quantized``. Both score the same ``--tokens`` tokens of BoolQ passages (one forward) and
generate ``--new-tokens`` greedily from the first 16; printed: the largest absolute logit difference, the share of
positions with the same argmax, and whether the generations are identical. A failure of the peer is printed with
its error (the last lines of its output).
Layer by layer it also compares the weight the peer's kernel multiplies by (``dequantize_weight()``) with ours,
exactly and rounded to the peer's dtype, and scores our model once more with its weights rounded that way, so that
what is left of the logit difference is summation order.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEER = r"""
import json, sys, torch, transformers
ckpt, io = sys.argv[1], sys.argv[2]
ids = torch.tensor(json.load(open(io + "/ids.json")))
import gptqmodel, optimum
versions = {"torch": torch.__version__, "transformers": transformers.__version__,
            "gptqmodel": gptqmodel.__version__, "optimum": optimum.__version__ if hasattr(optimum, "__version__") else "?"}
model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, device_map="cpu", dtype=torch.float32).eval()
quant = {n: m for n, m in model.named_modules() if hasattr(m, "qweight")}
kinds = sorted({type(m).__module__ + "." + type(m).__name__ for m in quant.values()})
weights = {}
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
    gen = model.generate(ids[:, :16], max_new_tokens=int(sys.argv[3]), do_sample=False)
    for n, m in quant.items():  # the weight the peer's kernel multiplies by, (out, in), in the dtype it uses
        w = m.dequantize_weight()
        weights[n] = w.T.contiguous() if tuple(w.shape) == (m.in_features, m.out_features) else w
torch.save({"logits": logits, "gen": gen, "versions": versions, "kinds": kinds, "weights": weights},
           io + "/peer.pt")
"""


def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.14.1", "gptqmodel", "optimum",
                        "transformers", "accelerate"], check=True)
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="fairret-output/smollm2-gptq4")
    ap.add_argument("--venv", default=str(ROOT / ".venv-interop"))
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=20)
    args = ap.parse_args()
    from quant_load import ensure_checkpoint

    from fairret.quant.evaluate import load_passages
    from fairret.quant.export import QuantLinear, dequantize, unpack_layer
    from fairret.quant.model import load_quantized

    ckpt = ensure_checkpoint(args.ckpt)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    text = " ".join(load_passages(20))
    ids = tok(text, return_tensors="pt")["input_ids"][:, : args.tokens]
    ours = load_quantized(ckpt)
    with torch.no_grad():
        logits = ours(input_ids=ids).logits.float()
        gen = ours.generate(ids[:, :16], max_new_tokens=args.new_tokens, do_sample=False)
    py = ensure_venv(Path(args.venv))
    with tempfile.TemporaryDirectory() as io:
        Path(io, "ids.json").write_text(json.dumps(ids.tolist()))
        r = subprocess.run([str(py), "-c", PEER, str(ckpt.resolve()), io, str(args.new_tokens)], capture_output=True,
                           text=True)
        if r.returncode:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            print(f"The peer failed (exit {r.returncode}):\n{tail}")
            sys.exit(1)
        peer = torch.load(Path(io, "peer.pt"), weights_only=False)
    diff = (peer["logits"] - logits).abs()
    same = (peer["logits"].argmax(-1) == logits.argmax(-1)).float().mean().item()
    print(f"peer: {peer['versions']}, {len(peer['weights'])} quantized layers as {peer['kinds']}")
    # Layer by layer: the peer's dequantized weight against ours, both exactly and rounded to the peer's dtype
    ours_w = {n: dequantize(*unpack_layer(m.state_dict(), m.bits)) for n, m in ours.named_modules()
              if isinstance(m, QuantLinear)}
    missing = sorted(set(ours_w) ^ set(peer["weights"]))
    exact = rounded = 0
    worst = 0.0
    dtypes = set()
    for n, w in ours_w.items():
        pw = peer["weights"].get(n)
        if pw is None:
            continue
        dtypes.add(str(pw.dtype))
        exact += bool(torch.equal(pw.float(), w))
        rounded += bool(torch.equal(pw, w.to(pw.dtype)))
        worst = max(worst, (pw.float() - w).abs().max().item())
    print(f"weights: {len(ours_w)} layers here, {len(peer['weights'])} in the peer"
          f"{f' (not in both: {missing[:4]})' if missing else ''}; the peer dequantizes to {sorted(dtypes)}; "
          f"equal to ours in float32 in {exact}, equal to ours rounded to the peer's dtype in {rounded} "
          f"(largest difference to ours in float32 {worst:.3g})")
    # The same forward with our weights rounded as the peer rounds them: what is left is summation order
    for n, w in ours_w.items():
        if n in peer["weights"]:
            ours.get_submodule(n).forward = _rounded_forward(w.to(peer["weights"][n].dtype).float(),
                                                               ours.get_submodule(n).bias)
    with torch.no_grad():
        logits_r = ours(input_ids=ids).logits.float()
    diff_r = (peer["logits"] - logits_r).abs()
    print(f"{ids.shape[1]} tokens: max |logit difference| {diff.max().item():.3g} (mean {diff.mean().item():.3g}, "
          f"logits up to {logits.abs().max().item():.3g}); with our weights rounded as the peer rounds them "
          f"{diff_r.max().item():.3g} (mean {diff_r.mean().item():.3g}); same argmax at {100 * same:.1f}% of "
          f"positions; greedy generation of {args.new_tokens} tokens "
          f"{'identical' if torch.equal(peer['gen'], gen) else 'DIFFERENT'}")
    if not torch.equal(peer["gen"], gen):
        print("ours:", tok.decode(gen[0, 16:]), "\npeer:", tok.decode(peer["gen"][0, 16:]))


def _rounded_forward(weight: torch.Tensor, bias):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return forward

if __name__ == "__main__":
    main()
