"""``python -m fairret.lightning``: LightningCLI over the example tabular classifier and data module.

Every ready config (the repository's ``callbacks/`` folder, shipped in the wheel as ``fairret/lightning/configs``;
:func:`config_path` finds it) works here and with any LightningCLI of your own::

    python -m fairret.lightning fit --config callbacks/demographic_parity.yaml --data.dataset compas
    # from an installed copy, wherever it is:
    python -m fairret.lightning fit --data.dataset compas --config \\
        "$(python -c 'from fairret.lightning import config_path as c; print(c("demographic_parity"))')"
    python -m fairret.lightning fit --data.dataset adult \\
        --trainer.callbacks+=fairret.lightning.FairnessMonitor --trainer.callbacks.sens=sens
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI

from .examples import TabularClassifier, TabularDataModule

__all__ = ["cli_main", "config_path"]


def config_path(name: Optional[str] = None) -> Path:
    """Where the ready LightningCLI configs are: the folder (``name=None``) or one config's file.

    In an installed wheel they are ``fairret/lightning/configs/``; in a checkout (or an editable install) the
    repository's ``callbacks/`` folder.

    Args:
        name: a config's name, with or without ``.yaml`` (e.g. ``"demographic_parity"``).

    Raises:
        FileNotFoundError: the configs are not where a wheel or a checkout puts them.
        ValueError: no config has that name (the message lists them).

    Example:
        >>> config_path("demographic_parity").name
        'demographic_parity.yaml'
        >>> "monitor_only.yaml" in [p.name for p in config_path().glob("*.yaml")]
        True
    """
    here = Path(__file__).resolve().parent
    folder = next((d for d in (here / "configs", here.parent.parent / "callbacks")
                   if (d / "demographic_parity.yaml").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"fairret's LightningCLI configs are in neither {here / 'configs'} nor "
                                f"{here.parent.parent / 'callbacks'}")
    if name is None:
        return folder
    path = folder / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"Expected argument `name` to be one of {names}, but got {name!r}")
    return path


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> LightningCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` as on the command line (default ``sys.argv``)."""
    return LightningCLI(TabularClassifier, TabularDataModule, args=args, run=run, save_config_callback=None,
                        parser_kwargs={"default_env": False})


if __name__ == "__main__":  # pragma: no cover
    cli_main()
