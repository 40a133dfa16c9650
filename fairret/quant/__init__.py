"""Fair-GPTQ: bias-aware GPTQ quantization of transformer models (needs the ``quant`` extra for models and files).

* :mod:`~fairret.quant.gptq`: GPTQ for one layer and the Fair-GPTQ shift (pure torch);
* :mod:`~fairret.quant.pairs`: explicit, validated (stereotype, anti-stereotype) pairs, the masked
  :math:`H_\\Delta`, and :math:`H` with :math:`H_\\Delta` for the cost of :math:`H`;
* :mod:`~fairret.quant.model`: layer-sequential quantization of Hugging Face models (Llama, Mistral, OPT, GPT-2,
  BERT), GPTQ-v1 checkpoints out and back in;
* :mod:`~fairret.quant.export`: the GPTQ-v1 tensor format and ``QuantLinear``;
* :mod:`~fairret.quant.evaluate`: StereoSet stereotype scores (causal LMs and encoders), fidelity, perplexity;
* ``python -m fairret.quant``: the command line with a before/after table.
"""
from .gptq import (GPTQResult, HessianAccumulator, Quantizer, fair_gptq_quantize, fair_objective, fair_shift,
                   gptq_quantize)
from .pairs import PairDeltaAccumulator, PairHessians, SentencePair, check_pairs, split_pairs

__all__ = ["Quantizer", "HessianAccumulator", "GPTQResult", "gptq_quantize", "fair_shift", "fair_objective",
           "fair_gptq_quantize", "SentencePair", "check_pairs", "split_pairs", "PairDeltaAccumulator",
           "PairHessians"]
