"""Taking predictions, labels and sensitive attributes out of an unmodified LightningModule and its batches.

A *selector* names a part of a batch (or of a module's output):

* ``None``: nothing;
* a ``str``: a key of a mapping (``batch["sens"]``);
* an ``int``: a position in a tuple or list (``batch[2]``);
* a list of those: a list of the selected parts (e.g. one tensor per protected attribute for CCdCov);
* a callable: ``selector(batch)``.

Example:
    >>> import torch
    >>> batch = {"x": torch.zeros(4, 3), "y": torch.ones(4), "sex": torch.zeros(4, 1), "age": torch.rand(4, 1)}
    >>> select(batch, "y", "labels").shape
    torch.Size([4])
    >>> [t.shape[1] for t in select(batch, ["sex", "age"], "sens")]
    [1, 1]
    >>> select((batch["x"], batch["y"]), 2, "labels")
    Traceback (most recent call last):
    ...
    ValueError: Argument `labels` selects position 2 of the batch, but the batch has only 2 parts
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any, Callable, List, Literal, Optional, Sequence, Union, overload

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["Selector", "select", "check_selector", "peek_train_batch", "PredictionCapture", "find_submodule"]

# int before str: a command-line value "2" is parsed (by LightningCLI's jsonargparse) as the position 2, not the key "2"
Selector = Union[None, int, str, List[Union[int, str]], Callable[[Any], Any]]


def check_selector(selector: Any, name: str, allow_none: bool = True) -> None:
    """Raise a clear error when ``selector`` is not a valid selector (see the module docstring)."""
    if selector is None:
        if not allow_none:
            raise ValueError(f"Expected argument `{name}` to select a part of the batch, but got None")
        return
    if callable(selector) or isinstance(selector, (str, int)) and not isinstance(selector, bool):
        return
    if isinstance(selector, (list, tuple)) and selector and all(
            isinstance(s, (str, int)) and not isinstance(s, bool) for s in selector):
        return
    raise TypeError(f"Expected argument `{name}` to be a key (str), a position (int), a non-empty list of those, or "
                    f"a callable, but got {selector!r}")


def peek_train_batch(trainer: Any) -> Any:
    """The first training batch, when it can be read at setup without side effects, else None.

    Only a ``DataLoader`` without worker processes whose sampler holds no generator of its own is read; the global
    torch RNG (which a shuffling sampler draws its seed from) is restored afterwards, so the training order is
    unchanged. Reads Lightning's private record of the training data source; any failure just gives None (the
    checks then run on the first batch).
    """
    try:
        from torch.utils.data import DataLoader

        source = trainer.fit_loop._data_source
        if source.instance is None:
            return None
        loader = source.dataloader()
        if not isinstance(loader, DataLoader) or loader.num_workers > 0:
            return None
        for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
            if getattr(s, "generator", None) is not None:
                return None
        with torch.random.fork_rng(devices=[]):
            return next(iter(loader))
    except Exception:  # noqa: BLE001 - best effort: the first batch is checked anyway
        return None


def select(batch: Any, selector: Selector, name: str) -> Any:
    """The part of ``batch`` named by ``selector``; a clear error names the argument when it does not exist."""
    if selector is None:
        return None
    if isinstance(selector, (list, tuple)):
        return [select(batch, s, name) for s in selector]
    if isinstance(selector, str):
        if not isinstance(batch, Mapping):
            raise ValueError(f"Argument `{name}` selects key {selector!r}, but the batch is a {type(batch).__name__}, "
                             f"not a mapping; use a position (int) or a callable")
        if selector not in batch:
            raise ValueError(f"Argument `{name}` selects key {selector!r}, but the batch has keys {list(batch)}")
        return batch[selector]
    if isinstance(selector, int):
        if isinstance(batch, Mapping) or not isinstance(batch, (list, tuple)):
            raise ValueError(f"Argument `{name}` selects position {selector}, but the batch is a "
                             f"{type(batch).__name__}, not a tuple or list; use a key (str) or a callable")
        if not -len(batch) <= selector < len(batch):
            raise ValueError(f"Argument `{name}` selects position {selector} of the batch, but the batch has only "
                             f"{len(batch)} parts")
        return batch[selector]
    if not callable(selector):  # a sequence other than a list or tuple (check_selector refuses it too)
        raise TypeError(f"Expected argument `{name}` to be a key (str), a position (int), a non-empty list of those, "
                        f"or a callable, but got {selector!r}")
    return selector(batch)


@overload
def find_submodule(root: torch.nn.Module, name: str, arg: str, strict: Literal[True] = ...) -> torch.nn.Module: ...
@overload
def find_submodule(root: torch.nn.Module, name: str, arg: str, strict: bool) -> Optional[torch.nn.Module]: ...
def find_submodule(root: torch.nn.Module, name: str, arg: str, strict: bool = True) -> Optional[torch.nn.Module]:
    """``root``'s submodule with the dotted ``name``; an unknown name raises an error that names the argument
    ``arg`` and lists candidates (or returns None when not ``strict``)."""
    mods = dict(root.named_modules())
    if name in mods:
        return mods[name]
    if not strict:
        return None
    raise ValueError(f"Argument `{arg}`={name!r} names no submodule of {type(root).__name__}; its submodules "
                     f"include {[n for n in mods if n][:20]}")


class PredictionCapture:
    """Records the output of a (sub)module while active, through a forward hook.

    Args:
        module: dotted name of the submodule whose output are the predictions (``"head"``, ``"net.3"``); ``None``
            or ``""`` for the LightningModule's own forward (``self(x)`` in its steps).
        output: selector applied to that output when it is a tuple or mapping (e.g. ``0`` or ``"logits"``).

    The module must be *called* (``self.net(x)``, ``self(x)``): a direct ``.forward(x)`` call bypasses hooks, and
    the capture then reports that nothing was recorded. When the module runs several times in one step, the last
    output is used (a warning says so once).
    """

    def __init__(self, module: Optional[str] = None, output: Selector = None):
        if module is not None and not isinstance(module, str):
            raise TypeError(f"Expected argument `prediction_module` to be a submodule name (str) or None, but got "
                            f"{module!r}")
        check_selector(output, "prediction_output")
        self.module_name = module or ""
        self.output = output
        self._handle: Optional[RemovableHandle] = None
        self._active = False
        self._outputs: List[Any] = []
        self._warned = False

    def attach(self, root: torch.nn.Module, strict: bool = True) -> bool:
        """Register the hook on ``root``'s submodule; returns whether it did.

        An unknown name raises an error listing the candidates, or returns False when not ``strict`` (modules that
        build their layers in their own ``setup`` hook, which Lightning runs after the callbacks' ``setup``).
        """
        self.detach()
        if self.module_name:
            target = find_submodule(root, self.module_name, "prediction_module", strict)
            if target is None:
                return False
        else:
            target = root
        self._handle = target.register_forward_hook(self._hook)
        return True

    @property
    def attached(self) -> bool:
        """Whether the hook is registered."""
        return self._handle is not None

    def detach(self) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._active:
            self._outputs.append(output)

    @contextlib.contextmanager
    def recording(self):
        """Record outputs inside the ``with`` block (previous records are dropped)."""
        self._outputs = []
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def start(self) -> None:
        """Start recording (for hook pairs such as ``on_validation_batch_start``/``_end``)."""
        self._outputs = []
        self._active = True

    def stop(self) -> None:
        """Stop recording."""
        self._active = False

    def take(self) -> torch.Tensor:
        """The recorded predictions as a tensor (the last recorded call); clears the record."""
        outputs, self._outputs = self._outputs, []
        where = f"submodule {self.module_name!r}" if self.module_name else "the LightningModule's forward"
        if not outputs:
            raise RuntimeError(f"No output of {where} was recorded during the step. Call the module (`self(x)` or "
                               f"`self.<name>(x)`), not `.forward(x)`, or set `prediction_module` to the submodule "
                               f"that produces the predictions")
        if len(outputs) > 1 and not self._warned:
            self._warned = True
            warnings.warn(f"{where} ran {len(outputs)} times in one step; the fairness penalty uses the last output",
                          stacklevel=2)
        out = outputs[-1]
        if self.output is not None:
            out = select(out, self.output, "prediction_output")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"Expected the predictions taken from {where} to be a tensor, but got "
                            f"{type(out).__name__}; set `prediction_output` to select it")
        return out
