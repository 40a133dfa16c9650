"""One progress bar for the long loops (the demo's training runs, quantization blocks, evaluation batches)."""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: Optional[str], unit: str, leave: bool = True) -> Any:
    """A ``tqdm`` bar over ``total`` items labelled ``desc``, or None when ``desc`` is None (no bar wanted) or tqdm
    is not installed (it comes with the ``lightning`` and ``quant`` extras); callers update it when it is not None.

    Args:
        total: the number of items.
        desc: the bar's label; None for no bar.
        unit: what one item is (``run``, ``block``, ``seq``).
        leave: keep the finished bar on screen.

    Example:
        >>> progress_bar(10, None, "item") is None
        True
    """
    if desc is None:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=leave)
