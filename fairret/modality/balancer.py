r"""``ModalityBalancer``: the plain-PyTorch API of the coefficient rules, and the surgery helpers.

A few lines in any training loop (gradient accumulation, AMP and DDP included)::

    balancer = ModalityBalancer(OGMGE(alpha=0.5), {"audio": audio_net.parameters(), "video": video_net.parameters()},
                                head_slices={"audio": [(head.weight, slice(0, 64))],
                                             "video": [(head.weight, slice(64, 128))]})
    for i, (xa, xv, y) in enumerate(loader):
        fa, fv = audio_net(xa), video_net(xv)
        out = head(torch.cat([fa, fv], 1))
        balancer.update(linear_head_slices(head, [fa, fv]), y)      # after the forward, every micro-batch
        scaler.scale(loss_fn(out, y) / accum).backward()
        if (i + 1) % accum == 0:
            scaler.unscale_(optimizer)                               # with a GradScaler: unscale first
            balancer.apply()                                         # before clipping and optimizer.step()
            scaler.step(optimizer); scaler.update(); optimizer.zero_grad()

``update`` pools the statistics of the micro-batches of one optimiser step; ``apply`` all-reduces them across
ranks (``sync_dist``, so that every rank computes identical coefficients), computes the coefficients, scales the
gradients of each modality's parameters and head slices, adds OGM-GE's noise from a generator seeded by
``(seed, step)`` (identical on every rank, whose gradients DDP has already averaged), and advances the step.

For :class:`~fairret.modality.rules.MMPareto` and :class:`~fairret.modality.rules.BalGrad` (manual
optimisation): :func:`mmpareto_backward` and :func:`balgrad_backward` compute the separate gradients with
``torch.autograd.grad`` and write the combined ones into ``.grad`` (adding to what is there, so accumulation
works); under DDP call :func:`average_gradients` afterwards, since ``autograd.grad`` bypasses DDP's reducer.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from .._distributed import all_reduce_sum, is_distributed
from .._state import load_module_state
from .apply import HeadSlice, add_gradient_noise, gradient_stds, noise_generator, scale_parameter_gradients
from .rules import OGMGE, BalanceRule, BalGrad, MMPareto

__all__ = ["ModalityBalancer", "mmpareto_backward", "balgrad_backward", "average_gradients"]


class ModalityBalancer:
    """Applies a coefficient rule (:class:`OGMGE`, or :class:`AGM` for parameter-level use) to parameter groups.

    Args:
        rule: the coefficient rule.
        groups: modality name → its encoder's parameters (order = the order of the logits given to ``update``).
        head_slices: modality name → ``[(head.weight, columns), ...]``: the fusion head's weight columns fed by the
            modality, scaled with it (most of a shortcut's bias sits in the head).
        seed: seed of the enhancement noise (with the step number).
        sync_dist: all-reduce the statistics under ``torch.distributed``.
    """

    def __init__(self, rule: BalanceRule, groups: Mapping[str, Iterable[torch.nn.Parameter]],
                 head_slices: Optional[Mapping[str, Sequence[HeadSlice]]] = None, seed: int = 0,
                 sync_dist: bool = True):
        if not isinstance(rule, BalanceRule):
            raise TypeError(f"Expected argument `rule` to be a coefficient rule (OGMGE, AGM), but got "
                            f"{type(rule).__name__}; MMPareto and BalGrad use mmpareto_backward / balgrad_backward")
        self.groups = {k: list(v) for k, v in groups.items()}
        if len(self.groups) < 2:
            raise ValueError(f"Expected argument `groups` to name at least two modalities, but got {list(self.groups)}")
        for k, v in self.groups.items():
            if not v:
                raise ValueError(f"Modality {k!r} in `groups` has no parameters")
        self.head_slices = {k: list(v) for k, v in (head_slices or {}).items()}
        unknown = [k for k in self.head_slices if k not in self.groups]
        if unknown:
            raise ValueError(f"Argument `head_slices` names modalities {unknown} that are not in `groups`")
        self.rule, self.seed, self.sync_dist = rule, int(seed), bool(sync_dist)
        self.step = 0
        self.last_coefficients: Optional[Dict[str, float]] = None

    @property
    def modalities(self) -> List[str]:
        return list(self.groups)

    def update(self, scores_input: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add a micro-batch: unimodal logits (OGM-GE) or Shapley contributions (AGM), in the groups' order."""
        if len(scores_input) != len(self.groups):
            raise ValueError(f"Expected {len(self.groups)} per-modality tensors (for {self.modalities}), but got "
                             f"{len(scores_input)}")
        self.rule.update(scores_input, target)

    def coefficients(self) -> Dict[str, float]:
        """Pool (and all-reduce) this step's statistics and return the coefficients, without touching gradients."""
        if self.sync_dist and self.rule.stats.numel():
            self.rule.stats = all_reduce_sum(self.rule.stats)  # a copy; the statistics carry no gradient
        k = self.rule.coefficients(self.step)
        return {name: float(v) for name, v in zip(self.modalities, k.tolist())}

    def apply(self) -> Dict[str, float]:
        """Scale the gradients (call once per optimiser step, after unscaling, before clipping and the step)."""
        coeffs = self.coefficients()
        noisy = isinstance(self.rule, OGMGE) and self.rule.noise and self.rule.in_window(self.step)
        # OGM-GE: g <- k g + N(0, std(g)^2), the std of the gradient before modulation, on every encoder
        stds = gradient_stds(p for ps in self.groups.values() for p in ps) if noisy else None
        scale_parameter_gradients(self.groups, coeffs, self.head_slices)
        if noisy:
            for i, (name, params) in enumerate(self.groups.items()):
                gen = noise_generator(self.seed * 131 + i, self.step, params[0].device)
                add_gradient_noise(params, gen, stds)
        self.last_coefficients = coeffs
        self.step += 1
        return coeffs

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step, "rule": self.rule.state_dict(), "last": self.last_coefficients}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])
        load_module_state(self.rule, state["rule"])
        self.last_coefficients = state.get("last")


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], retain: bool) -> List[torch.Tensor]:
    gs = torch.autograd.grad(loss, list(params), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def _add_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g.detach())


def mmpareto_backward(rule: MMPareto, loss_mm: torch.Tensor, unimodal_losses: Mapping[str, torch.Tensor],
                      groups: Mapping[str, Iterable[torch.nn.Parameter]],
                      shared: Iterable[torch.nn.Parameter] = ()) -> Dict[str, tuple]:
    """MMPareto's gradients into ``.grad``: each encoder gets the Pareto combination of its multimodal and
    unimodal gradients; ``shared`` parameters (the fusion and unimodal heads) the plain sum of every loss's
    gradient. Returns the weights used per modality."""
    by_name = {k: list(v) for k, v in groups.items()}  # lists: iterated more than once
    missing = [k for k in by_name if k not in unimodal_losses]
    if missing:
        raise ValueError(f"Expected a unimodal loss for every modality in `groups`; missing {missing}")
    shared_params = list(shared)
    enc = [p for ps in by_name.values() for p in ps]
    g_mm = _grads(loss_mm, enc + shared_params, retain=True)
    g_mm_enc, g_mm_shared = g_mm[: len(enc)], g_mm[len(enc):]
    weights, start = {}, 0
    uni_shared = [torch.zeros_like(p) for p in shared_params]
    names = list(by_name)
    for i, name in enumerate(names):
        params = by_name[name]
        last = i == len(names) - 1
        g_u = _grads(unimodal_losses[name], params + shared_params, retain=not last)
        combined, w = rule.combine(g_mm_enc[start:start + len(params)], g_u[: len(params)])
        for p, g in zip(params, combined):
            _add_grad(p, g)
        uni_shared = [a + b for a, b in zip(uni_shared, g_u[len(params):])]
        weights[name] = w
        start += len(params)
    for p, a, b in zip(shared_params, g_mm_shared, uni_shared):
        _add_grad(p, a + b)
    return weights


def balgrad_backward(rule: BalGrad, task_loss: torch.Tensor, unimodal_logits: Sequence[torch.Tensor],
                     target: torch.Tensor, groups: Mapping[str, Iterable[torch.nn.Parameter]],
                     shared: Iterable[torch.nn.Parameter] = ()) -> Dict[str, bool]:
    """BalGrad's gradients into ``.grad``: per encoder the (projected) task gradient plus the weighted KL gradient;
    ``shared`` parameters get the plain sum. Returns, per modality, whether its task gradient was projected."""
    by_name = {k: list(v) for k, v in groups.items()}  # lists: iterated more than once
    shared_params = list(shared)
    enc = [p for ps in by_name.values() for p in ps]
    kl = rule.kl_loss(unimodal_logits, target)
    g_t = _grads(task_loss, enc + shared_params, retain=True)
    g_k = _grads(kl, enc + shared_params, retain=False)
    out, start = {}, 0
    for name, params in by_name.items():
        sl = slice(start, start + len(params))
        combined, projected = rule.combine(g_t[sl], g_k[sl])
        for p, g in zip(params, combined):
            _add_grad(p, g)
        out[name] = projected
        start += len(params)
    for p, a, b in zip(shared_params, g_t[len(enc):], g_k[len(enc):]):
        _add_grad(p, a + b)
    return out


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the ``.grad`` of ``params`` across ranks (after the surgery helpers under DDP)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)

