"""Restoring module state that ``load_state_dict`` cannot: buffers registered as ``None`` until first use."""
from __future__ import annotations

from typing import Dict

import torch

__all__ = ["load_module_state"]


def load_module_state(module: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load parameters and buffers, including buffers that are still ``None`` (lazily created running statistics)."""
    for key, value in state.items():
        *path, leaf = key.split(".")
        sub = module.get_submodule(".".join(path)) if path else module
        if leaf in sub._buffers:
            sub._buffers[leaf] = value.clone()
        elif (param := sub._parameters.get(leaf)) is not None:
            with torch.no_grad():
                param.copy_(value)
        else:
            raise KeyError(f"Saved state has {key!r}, which the module {type(module).__name__} lacks")
