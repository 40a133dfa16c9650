r"""``ModalityBalance``: OGM-GE / AGM gradient modulation for an unmodified multimodal LightningModule.

Statistics come from every training forward (all micro-batches of an optimiser step are pooled): either from the
input of an additive linear fusion head (``head="fusion"`` with the modalities' ``widths``: the unimodal logits
are its column slices, OGM-GE's decomposition; calls of the head under ``torch.no_grad`` are ignored), or from a list of per-modality tensors the module stores in an
attribute during ``training_step`` (``scores_attr="modality_logits"``: unimodal logits, or Shapley contributions
for AGM). The coefficients are computed and applied once per optimiser step in ``on_before_optimizer_step``:
after AMP unscaling and DDP's gradient averaging, before gradient clipping. Under DDP the statistics are
all-reduced and the enhancement noise is drawn from a generator seeded by ``(seed, global_step)``, so every rank
applies identical coefficients and noise and the replicas stay identical.

Supported fusions: OGM-GE needs unimodal logits, i.e. an additive linear fusion head (late fusion) or the module's
own unimodal heads; AGM works with any fusion, early fusion included, through Shapley contributions the module
computes (``fairret.modality.shapley_contributions``, 2^M forwards); here AGM scales each encoder's parameter
gradients, while the feature-level variant (``scale_grad`` on each contribution) is the plain-PyTorch API.
MMPareto and BalGrad need the separate gradients of several losses: use manual optimisation with
``fairret.modality.mmpareto_backward`` / ``balgrad_backward``.

Example:
    >>> from fairret.modality import OGMGE
    >>> from fairret.lightning import ModalityBalance
    >>> cb = ModalityBalance(OGMGE(alpha=0.5), encoders={"audio": "audio", "video": "video"}, head="head",
    ...                      widths={"audio": 16, "video": 16}, labels="y")
    >>> cb.modalities
    ['audio', 'video']
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import lightning.pytorch as pl
import torch
from torch.utils.hooks import RemovableHandle

from ..modality.balancer import ModalityBalancer
from ..modality.rules import BalanceRule
from ..modality.scores import linear_head_slices
from ._extract import Selector, check_selector, find_submodule, select

__all__ = ["ModalityBalance"]


class ModalityBalance(pl.Callback):
    """Modulates each modality's gradients once per optimiser step (see the module docstring).

    Args:
        rule: a coefficient rule (:class:`~fairret.modality.OGMGE` or :class:`~fairret.modality.AGM`).
        encoders: modality name → dotted name of its encoder submodule (the order defines the modalities').
        head: dotted name of the ``nn.Linear`` fusion head whose input is the concatenation of the modalities'
            features (in ``encoders`` order); with ``widths``, its slices give the unimodal logits.
        widths: modality name → its number of input columns of the head.
        scores_attr: instead of ``head``: name of a module attribute holding the per-modality tensors (unimodal
            logits or Shapley contributions) set in every training forward.
        scale_head: also scale each modality's columns of the head's weight (requires ``head`` and ``widths``).
        labels: selector of the targets in the batch.
        seed: seed of the enhancement noise.
        sync_dist: all-reduce the statistics under DDP.
        log_prefix: coefficients are logged as ``{log_prefix}/k_{modality}`` (every ``log_every_n_steps`` of the
            trainer).
    """

    def __init__(self, rule: BalanceRule, encoders: Mapping[str, str], head: Optional[str] = None,
                 widths: Optional[Mapping[str, int]] = None, scores_attr: Optional[str] = None,
                 scale_head: bool = True, labels: Selector = 1, seed: int = 0, sync_dist: bool = True,
                 log_prefix: str = "train/modality"):
        super().__init__()
        if not isinstance(rule, BalanceRule):
            raise TypeError(f"Expected argument `rule` to be OGMGE or AGM, but got {type(rule).__name__} (MMPareto "
                            f"and BalGrad need manual optimisation: see fairret.modality.mmpareto_backward)")
        if not isinstance(encoders, Mapping) or len(encoders) < 2:
            raise ValueError(f"Expected argument `encoders` to map at least two modalities to submodule names, "
                             f"but got {encoders!r}")
        if (head is None) == (scores_attr is None):
            raise ValueError("Give exactly one source of statistics: `head` (with `widths`) or `scores_attr`")
        if head is not None:
            if widths is None or sorted(widths) != sorted(encoders):
                raise ValueError(f"Argument `widths` must give the head's input width of every modality "
                                 f"{list(encoders)}, but got {widths!r}")
            bad = {k: v for k, v in widths.items() if not isinstance(v, int) or v < 1}
            if bad:
                raise ValueError(f"Expected positive int widths, but got {bad}")
        if scale_head and head is None:
            scale_head = False
        check_selector(labels, "labels", allow_none=False)
        self.rule = rule
        self.encoders = dict(encoders)
        self.head, self.scores_attr = head, scores_attr
        self.widths = None if widths is None else [int(widths[k]) for k in encoders]
        self.scale_head, self.labels, self.seed, self.sync_dist = scale_head, labels, int(seed), sync_dist
        self.log_prefix = log_prefix
        self.balancer: Optional[ModalityBalancer] = None
        self._handle: Optional[RemovableHandle] = None
        self._target: Optional[torch.Tensor] = None
        self._pending_state: Optional[Dict[str, Any]] = None

    @property
    def modalities(self):
        return list(self.encoders)

    def _balancer(self) -> ModalityBalancer:
        if self.balancer is None:
            raise RuntimeError("ModalityBalance: the balancer is built in setup(stage='fit'), which has not run")
        return self.balancer

    def _head_widths(self) -> List[int]:
        if self.widths is None:  # __init__ requires `widths` with `head`
            raise RuntimeError("ModalityBalance: `head` is set without `widths`")
        return self.widths

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        groups = {m: list(find_submodule(pl_module, n, f"encoders[{m!r}]").parameters())
                  for m, n in self.encoders.items()}
        slices = None
        if self.head is not None:
            head = find_submodule(pl_module, self.head, "head")
            if not isinstance(head, torch.nn.Linear):
                raise ValueError(f"Argument `head` must name an nn.Linear fusion head, but {self.head!r} is a "
                                 f"{type(head).__name__}")
            widths = self._head_widths()
            if sum(widths) != head.in_features:
                raise ValueError(f"Argument `widths` adds up to {sum(widths)}, but the head takes "
                                 f"{head.in_features} input columns")
            if self.scale_head:
                starts = [sum(widths[:i]) for i in range(len(widths))]
                slices = {m: [(head.weight, slice(s, s + w))] for m, s, w in zip(self.encoders, starts, widths)}
            self._handle = head.register_forward_hook(self._head_hook)
        self.balancer = ModalityBalancer(self.rule, groups, slices, seed=self.seed, sync_dist=self.sync_dist)
        if self._pending_state is not None:
            self.balancer.load_state_dict(self._pending_state)
            self._pending_state = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        target = select(batch, self.labels, "labels")
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"Expected the `labels` selected from the batch to be a tensor, got {type(target).__name__}")
        self._target = target

    def _head_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._target is None or not module.training or not torch.is_grad_enabled():
            return  # only the training forward: not validation, nor auxiliary no-grad passes (e.g. AGM's masks)
        feats = torch.split(args[0].detach().float(), self._head_widths(), dim=-1)
        with torch.no_grad(), torch.autocast(device_type=args[0].device.type, enabled=False):
            logits = linear_head_slices(module, feats)
        self._balancer().update(logits, self._target)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.scores_attr is not None and self._target is not None:
            values = getattr(pl_module, self.scores_attr, None)
            if values is None:
                raise ValueError(f"Argument `scores_attr`={self.scores_attr!r}: the module did not set it in "
                                 f"training_step")
            self._balancer().update([v.detach() for v in values], self._target)
        self._target = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        balancer = self._balancer()
        balancer.step = step
        coeffs = balancer.apply()
        if step % max(1, trainer.log_every_n_steps) == 0:  # Lightning's log costs ~1 ms a call: log as it logs
            pl_module.log_dict({f"{self.log_prefix}/k_{m}": k for m, k in coeffs.items()}, on_step=True,
                               on_epoch=False)

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.balancer is None else self.balancer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.balancer is None:
            self._pending_state = state_dict
        else:
            self.balancer.load_state_dict(state_dict)
