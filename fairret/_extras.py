"""One message for a missing optional dependency: which extra of ``fairret-plus`` to install."""
from __future__ import annotations

import importlib.util

__all__ = ["require_extra"]


def require_extra(extra: str, user: str, *packages: str) -> None:
    """Raise ``ImportError`` naming the extra to install when one of ``packages`` (top-level import names) is missing.

    Looks the packages up without importing them (``importlib.util.find_spec``), so a module can check at import
    what it imports only later.

    Args:
        extra: the extra of ``fairret-plus`` that installs them (``lightning``, ``quant``, ``plot``).
        user: the module or command that needs them, for the message.
        *packages: top-level import names.

    Example:
        >>> require_extra("plot", "fairret.metric plots", "math")  # present: nothing happens
        >>> require_extra("quant", "fairret.quant.model", "no_such_package_xyz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ImportError: fairret.quant.model needs the 'quant' extra (missing: no_such_package_xyz): pip install ...
    """
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"{user} needs the '{extra}' extra (missing: {', '.join(missing)}): "
                          f"pip install 'fairret-plus[{extra}]'")
