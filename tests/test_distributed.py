"""Global-batch statistics under torch.distributed: gloo, 2 CPU processes, against the single-process batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairret.metric import DistanceCorrelation, LinearFractionalParity
from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, JdCovLoss, KLProjectionLoss, NormLoss
from fairret.statistic import FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate

pytestmark = pytest.mark.distributed


def make_losses():
    eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
    return {"norm": (NormLoss(eo, p=2), True), "kl": (KLProjectionLoss(PositiveRate()), False),
            "ccdcov": (CCdCovLoss(), False), "dcor": (DistanceCorrelationLoss(), False),
            "jdcov": (JdCovLoss(), False)}


def data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 1, generator=g, dtype=torch.float64)
    y = (torch.rand(40, 1, generator=g) < 0.5).double()
    s = torch.nn.functional.one_hot(torch.randint(0, 3, (40,), generator=g), 3).double()
    return x, y, s


def single_process():
    x, y, s = data()
    out = {}
    for name, (loss, uses_label) in make_losses().items():
        xx = x.clone().requires_grad_(True)
        val = loss(xx, s, y) if uses_label else loss(xx, s)
        (g,) = torch.autograd.grad(val, xx)
        out[name] = (val.detach(), g)
    return out


def worker(rank, port, outdir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y, s = data()
    sl = slice(0, 17) if rank == 0 else slice(17, 40)  # unequal shards
    out = {}
    for name, (loss, uses_label) in make_losses().items():
        xx = x[sl].clone().requires_grad_(True)
        val = loss(xx, s[sl], y[sl]) if uses_label else loss(xx, s[sl])
        (g,) = torch.autograd.grad(val, xx)
        out[name] = (val.detach(), g)
    # epoch metrics: each rank sees its shard, compute() syncs the concatenated / summed states
    m_cor, m_lf = DistanceCorrelation(), LinearFractionalParity(PositiveRate(), 3)
    m_cor.update(x[sl], s[sl])
    m_lf.update(torch.sigmoid(x[sl]), s[sl])
    out["metric_dcor"] = (m_cor.compute(), None)
    out["metric_parity"] = (m_lf.compute_per_group(), None)
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_equal_full_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = {r: torch.load(tmp_path / f"rank{r}.pt") for r in range(2)}
    ref = single_process()
    x, _, s = data()
    want_dcor = DistanceCorrelation()
    want_dcor.update(x, s)
    want_lf = LinearFractionalParity(PositiveRate(), 3)
    want_lf.update(torch.sigmoid(x), s)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank]["metric_dcor"][0], want_dcor.compute(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(results[rank]["metric_parity"][0], want_lf.compute_per_group())
    for name, (val, grad) in ref.items():
        for rank, sl in ((0, slice(0, 17)), (1, slice(17, 40))):
            rval, rgrad = results[rank][name]
            torch.testing.assert_close(rval, val, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(rgrad, grad[sl], rtol=1e-7, atol=1e-10)
