"""Datasets, tiny models, Trainer arguments and the DDP worker of the Hugging Face Trainer tests (importable, so that
spawned processes can run the worker)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import TrainingArguments

from fairret.huggingface import FairnessTrainer
from fairret.loss import CCdCovLoss, NormLoss
from fairret.statistic import EqualizedOdds


class Rows(Dataset):
    def __init__(self, tensors):
        self.t = tensors

    def __len__(self):
        return len(next(iter(self.t.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.t.items()}


def tabular(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    labels = (x[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).long()
    sens = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).float()
    return {"x": x, "labels": labels, "sens": sens}


class Tiny(torch.nn.Module):
    """A two-class head with a mean cross-entropy (the Trainer divides it by the accumulation steps). With an
    ``idx`` batch entry it records, in training, which rows each forward saw (``seen``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(5, 2)
        self.seen: List[List[int]] = []

    def _record(self, idx):
        if idx is not None and self.training:
            self.seen.append(idx.tolist())

    def forward(self, x, labels=None, idx=None):
        self._record(idx)
        logits = self.lin(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class TinyItems(Tiny):
    """The same loss normalised over the whole accumulated batch (``num_items_in_batch``): not divided again."""

    def forward(self, x, labels=None, idx=None, **kwargs):
        self._record(idx)
        logits = self.lin(x)
        n = kwargs.get("num_items_in_batch")
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        return {"loss": loss / n if n is not None else loss / len(labels), "logits": logits}


class Sequential(FairnessTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class PenaltyLog(FairnessTrainer):
    """Keeps the penalty of every training micro-batch (``penalties``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalties: List[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch, **kwargs)
        if model.training:
            self.penalties.append(float(self.last_penalty))
        return out


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1,
                learning_rate=0.1, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[],
                use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


# --- DDP ------------------------------------------------------------------------------------------------------------
#: the DDP test's runs: model class, loss (a global-batch one: sync_dist=True, their default) and whether it takes
#: the labels; each with and without gradient accumulation
DDP_MODELS = {"mean-loss": Tiny, "num-items-in-batch": TinyItems}
DDP_LOSSES = {"normloss-eo": (lambda: NormLoss(EqualizedOdds()), True), "ccdcov": (lambda: CCdCovLoss(), False)}
DDP_LAM, DDP_LR, DDP_ROWS = 0.7, 0.1, 8


def ddp_data() -> Dict[str, torch.Tensor]:
    data = tabular(DDP_ROWS, seed=3)
    data["idx"] = torch.arange(DDP_ROWS)
    return data


def ddp_run(outdir: str, model_name: str, loss_name: str, steps: int, batch: int, ddp: bool = True
            ) -> Dict[str, Any]:
    """One optimiser step of a FairnessTrainer over the 8 rows: ``steps`` accumulation steps of ``batch`` rows per
    process; the parameters after it, the rows of each forward and the penalty of each micro-batch. ``ddp``: in a
    process of :func:`ddp_worker` (gloo)."""
    model = DDP_MODELS[model_name]()
    make, _ = DDP_LOSSES[loss_name]
    extra = {"ddp_backend": "gloo"} if ddp else {}
    trainer = PenaltyLog(model=model, args=args(outdir, per_device_train_batch_size=batch,
                                                gradient_accumulation_steps=steps, learning_rate=DDP_LR, **extra),
                         train_dataset=Rows(ddp_data()), fairness_loss=make(), lam=DDP_LAM)
    trainer.train()
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()}, "seen": model.seen,
            "penalties": trainer.penalties, "world_size": trainer.args.world_size}


def ddp_worker(rank: int, port: int, outdir: str) -> None:
    """One of two gloo processes on the CPU, as torchrun would start it: the Trainer sets up DDP from the
    environment. Saves every run's results to ``outdir/rank{rank}.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    out = {}
    for model_name in DDP_MODELS:
        for loss_name in DDP_LOSSES:
            for steps in (1, 2):  # 4 rows per process in one step, or 2 accumulation steps of 2
                out[(model_name, loss_name, steps)] = ddp_run(outdir, model_name, loss_name, steps, 4 // steps)
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
