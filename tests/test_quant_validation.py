"""Issue 19 rows 16 and 17, quantization part: argument and value validation of the GPTQ entry points.

Each bad argument raises ValueError naming it (the validation lives in ``fairret/quant/gptq.py``).
"""
import pytest
import torch

from fairret.quant import HessianAccumulator, gptq_quantize

def layer(d_out=8, d_in=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g)
    acc = HessianAccumulator(d_in)
    acc.add(torch.randn(64, d_in, generator=g))
    return W, acc.H


def test_a_valid_layer_quantizes_to_finite_codes():
    # the control: the same entry points on valid input (not pending)
    W, H = layer()
    res = gptq_quantize(W, H, bits=4, group_size=8, block_size=4)
    assert torch.isfinite(res.weight).all()
    assert int(res.qweight.min()) >= 0 and int(res.qweight.max()) <= 15


@pytest.mark.parametrize("block_size", [0, -1, 2.5])
def test_row16_block_size(block_size):
    # before the validation: 0 raised range()'s ValueError, 2.5 a TypeError, and -1 silently gave all-zero weights
    W, H = layer()
    with pytest.raises(ValueError, match=r"Expected argument `block_size` to be a positive int, but got"):
        gptq_quantize(W, H, block_size=block_size)


def test_row16_singular_hessian_without_damping():
    W, _ = layer()
    H = torch.eye(16, dtype=torch.float64)
    H[0, 1] = H[1, 0] = 1.0  # positive semi-definite, exactly singular, no zero diagonal (no dead column)
    # before the validation: torch's _LinAlgError from the Cholesky factorisation, which named neither argument
    with pytest.raises(ValueError, match=r"Expected argument `H` to be positive definite after damping .*`damp`"):
        gptq_quantize(W, H, damp=0.0)


def test_row16_hessian_accumulator_width():
    acc = HessianAccumulator(16)  # before: addmm_'s RuntimeError "Bad in-place call"
    with pytest.raises(ValueError, match=r"Expected argument `x` to have 16 columns \(`columns` of the "
                                         r"accumulator\), but got 8"):
        acc.add(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"Expected argument `X` to have 16 columns \(`columns` of the "
                                         r"accumulator\), but got 8"):
        acc.add_rows(torch.randn(4, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["W", "H"])
def test_row17_nonfinite_weights_or_hessian(bad, where):
    W, H = layer()
    (W if where == "W" else H)[2, 3] = bad
    # before: NaN weights were written as int32 codes of -2**31; the codes must never silently be wrong
    with pytest.raises(ValueError, match=rf"Expected argument `{where}` to be finite"):
        gptq_quantize(W, H)


def test_command_line_refuses_out_at_a_bit_width_it_cannot_write(capsys):
    """--out with bits GPTQ-v1 cannot hold is refused at once, before a model is loaded or quantized."""
    from fairret.quant.__main__ import main

    with pytest.raises(SystemExit):
        main(["--model", "no/such/folder", "--bits", "5", "--out", "x"])
    err = capsys.readouterr().err
    assert "--out: GPTQ-v1 checkpoints hold" in err and "not 5" in err
    assert "no/such/folder" not in err  # the model was never looked for
