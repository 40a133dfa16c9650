"""On a CUDA device (every test marked ``gpu``, skipped without one): the distance-covariance functionals, the
losses, the metrics and the Lightning callbacks give on CUDA tensors what they give on CPU tensors, through every
backend that runs there; with more than ``DENSE_MAX_N`` rows ``auto`` takes the CUDA kernels (the first test says
so), and a Lightning run on the GPU trains through them. Run by ``benchmarks/gpu_check.sh``.

The references are computed on the CPU in float64 (``tiled``, itself tested against dcor and the dense reference).
Tolerances: 1e-9 for float64, 1e-4 for float32 (relative to the value, or to the gradient's largest entry).
"""
from __future__ import annotations

import pytest
import torch

from fairret.functional import (concatenated_distance_covariance_sqr, distance_correlation_sqr,
                                distance_covariance_sqr, joint_distance_covariance_sqr)
from fairret.loss import (CCdCovLoss, DistanceCorrelationLoss, DistanceCovarianceLoss, JdCovLoss, KLProjectionLoss,
                          LSELoss, NormLoss)
from fairret.metric import CCdCov, DistanceCorrelation, IntersectionalJSD, JdCov, LinearFractionalParity
from fairret.ops import DENSE_MAX_N, resolve_backend
from fairret.statistic import PositiveRate, TruePositiveRate

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
N = DENSE_MAX_N + 477  # above the dense threshold: auto sends CUDA tensors to the kernels
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def _data(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 3, (n,), generator=g)
    groups[: n // 3] = (logits[: n // 3, 0] > 0).long()  # the groups depend on the predictions
    sens = torch.nn.functional.one_hot(groups, 3).double()
    age = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.5 * logits
    labels = (torch.rand(n, 1, generator=g, dtype=torch.float64) < torch.sigmoid(logits)).double()
    return logits, sens, age, labels, groups


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _value_and_grad(fn, pred: torch.Tensor, *rest: torch.Tensor, device: str, dtype=torch.float64):
    x = pred.to(device=device, dtype=dtype).requires_grad_()
    v = fn(x, *[r.to(device=device, dtype=dtype) for r in rest])
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


FUNCTIONALS = {
    "dcov": lambda x, s, a, be: distance_covariance_sqr(x, a, backend=be),
    "dcor_u": lambda x, s, a, be: distance_correlation_sqr(x, a, unbiased=True, backend=be),
    "dcov_onehot": lambda x, s, a, be: distance_covariance_sqr(x, s, backend=be),
    "jdcov": lambda x, s, a, be: joint_distance_covariance_sqr(x, s, a, backend=be),
    "ccdcov": lambda x, s, a, be: concatenated_distance_covariance_sqr(x, s, a, backend=be),
}
SORTED_APPLIES = {"dcov", "dcor_u", "dcov_onehot"}
_CPU_REFS: dict = {}


def test_auto_picks_the_kernels_on_this_device():
    x = torch.randn(N, 1, device=DEVICE, requires_grad=True)
    assert resolve_backend("auto", [x, torch.randn(N, 8, device=DEVICE)]) == "cuda"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["auto", "cuda", "tiled", "sorted", "dense"])
@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_functionals_on_the_device_equal_the_cpu(name, backend, dtype):
    if backend == "sorted" and name not in SORTED_APPLIES:
        pytest.skip("sorted: 1-D against 1-D or categorical only")
    logits, sens, age, _, _ = _data()
    f = FUNCTIONALS[name]
    if name not in _CPU_REFS:  # one CPU reference per functional, shared by its backends and dtypes
        _CPU_REFS[name] = _value_and_grad(lambda x, s, a: f(x, s, a, "tiled"), logits, sens, age, device="cpu")
    ref_v, ref_g = _CPU_REFS[name]
    v, g = _value_and_grad(lambda x, s, a: f(x, s, a, backend), logits, sens, age, device=DEVICE, dtype=dtype)
    assert v.device.type == g.device.type == torch.device(DEVICE).type and g.dtype == dtype
    assert _rel(v, ref_v) <= RTOL[dtype], (_rel(v, ref_v), v.item(), ref_v.item())
    assert _rel(g, ref_g) <= RTOL[dtype], _rel(g, ref_g)


LOSSES = {
    "DistanceCovarianceLoss": lambda: DistanceCovarianceLoss(),
    "DistanceCorrelationLoss": lambda: DistanceCorrelationLoss(unbiased=True),
    "JdCovLoss": lambda: JdCovLoss(),
    "CCdCovLoss": lambda: CCdCovLoss(weights=[1.0, 2.0]),
    "NormLoss": lambda: NormLoss(PositiveRate()),
    "LSELoss": lambda: LSELoss(TruePositiveRate()),
    "KLProjectionLoss": lambda: KLProjectionLoss(PositiveRate()),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_on_the_device_equal_the_cpu(name):
    logits, sens, age, labels, _ = _data()
    loss = LOSSES[name]()

    def call(x, s, a, y):
        if name in ("JdCovLoss", "CCdCovLoss"):
            return loss(x, [s, a])
        if name == "LSELoss":
            return loss(x, s, y)
        return loss(x, s)

    ref_v, ref_g = _value_and_grad(call, logits, sens, age, labels, device="cpu")
    loss.to(DEVICE)
    v, g = _value_and_grad(call, logits, sens, age, labels, device=DEVICE)
    rtol = 1e-7 if name == "KLProjectionLoss" else 1e-9  # an iterative projection, solved to 1e-12 either way
    assert _rel(v, ref_v) <= rtol and _rel(g, ref_g) <= rtol, (_rel(v, ref_v), _rel(g, ref_g))


def test_metrics_on_the_device_equal_the_cpu():
    logits, sens, age, labels, groups = _data()
    prob = torch.sigmoid(logits)

    def run(device):
        metrics = {"parity": LinearFractionalParity(PositiveRate(), 3), "dcor": DistanceCorrelation(),
                   "ccdcov": CCdCov(), "jdcov": JdCov(), "jsd": IntersectionalJSD()}
        out = {}
        for k, m in metrics.items():
            m = m.to(device)
            for sl in (slice(0, 700), slice(700, N)):  # two updates, as in an epoch
                p = prob[sl].to(device)
                if k == "parity":
                    m.update(p, sens[sl].to(device))
                elif k == "jsd":
                    m.update(p, groups[sl].to(device))
                else:
                    m.update(p, [sens[sl].to(device), age[sl].to(device)] if k != "dcor" else age[sl].to(device))
            out[k] = m.compute()
            assert out[k].device.type == torch.device(device).type, k
        return out

    cpu, dev = run("cpu"), run(DEVICE)
    for k in cpu:
        assert _rel(dev[k], cpu[k]) <= (1e-6 if k == "parity" else 1e-9), (k, dev[k], cpu[k])


def test_lightning_regularizer_on_the_gpu_trains_through_the_kernels():
    """A regularised step on the GPU with a batch above the dense threshold (so CCdCov runs on the kernels) gives
    the gradients of the same step on the CPU."""
    pl = pytest.importorskip("lightning.pytorch")
    from fairret.lightning import FairnessRegularizer
    from lightning_helpers import GradRecorder, Net, loader

    def grads(accelerator):
        rec = GradRecorder()
        reg = FairnessRegularizer(CCdCovLoss(), lam=3.0, sens=["sens", "age"])
        t = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, accelerator=accelerator, devices=1, num_sanity_val_steps=0,
                       max_steps=2, callbacks=[reg, rec])
        t.fit(Net(), loader(n=2 * N, batch_size=N))
        return rec.grads

    ref, got = grads("cpu"), grads("gpu" if DEVICE == "cuda" else "cpu")
    assert len(got) == len(ref) == 2
    for a, b in zip(got, ref):
        for k in b:
            assert _rel(a[k], b[k]) <= 1e-4, (k, _rel(a[k], b[k]))  # float32 model and penalty
