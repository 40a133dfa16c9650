"""``python -m fairret.lightning``: LightningCLI over the example tabular classifier and data module.

Every ready config (the repository's ``callbacks/`` folder, shipped in the wheel as ``fairret/lightning/configs``;
:func:`config_path` finds it) works here and with any LightningCLI of your own::

    python -m fairret.lightning fit --config callbacks/demographic_parity.yaml --data.dataset compas
    # from an installed copy, wherever it is:
    python -m fairret.lightning fit --data.dataset compas --config \\
        "$(python -c 'from fairret.lightning import config_path as c; print(c("demographic_parity"))')"
    python -m fairret.lightning fit --data.dataset adult \\
        --trainer.callbacks+=fairret.lightning.FairnessMonitor --trainer.callbacks.sens=sens
    # one selection for every fairness callback of the configs (a position: an int)
    python -m fairret.lightning fit --config callbacks/equalized_odds.yaml --fairness.sens sens --fairness.labels y

:class:`FairnessCLI` is the LightningCLI with the ``--fairness.sens`` / ``--fairness.labels`` options; use it in
place of ``LightningCLI`` with your own module and data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ._extract import Selector
from .examples import TabularClassifier, TabularDataModule

__all__ = ["cli_main", "config_path", "FairnessCLI"]


class FairnessCLI(LightningCLI):
    """``LightningCLI`` with one ``sens``/``labels`` selection for all fairness callbacks.

    ``--fairness.sens`` and ``--fairness.labels`` (or a ``fairness:`` section in a config file) set the selectors
    of every :class:`~fairret.lightning.FairnessRegularizer` and :class:`~fairret.lightning.FairnessMonitor` of the
    trainer, over what their own configs say (``--trainer.callbacks.sens`` changes only the last callback listed).
    Values are parsed as selectors: ``2`` is the position 2 of a tuple batch, ``sens`` a key, ``[sex, race]`` a
    list. ``labels`` goes to the monitors and to the regularizers whose loss takes labels. Use it exactly like
    ``LightningCLI``: ``FairnessCLI(MyModule, MyDataModule)``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--fairness.sens", type=Optional[Selector], default=None,
                            help="Selector of the sensitive attributes for every fairness callback (key, position, "
                                 "list)")
        parser.add_argument("--fairness.labels", type=Optional[Selector], default=None,
                            help="Selector of the labels for every fairness callback that takes them")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        sens, labels = config.get("fairness.sens"), config.get("fairness.labels")
        if sens is None and labels is None:
            return
        # Lightning sets Trainer.callbacks in its callback connector; the Trainer class does not declare it
        hit = apply_selection(self.trainer.callbacks, sens, labels)  # type: ignore[attr-defined]
        if not hit:
            raise ValueError("`--fairness.sens`/`--fairness.labels` are set, but the trainer has no "
                             "FairnessRegularizer or FairnessMonitor callback")


def apply_selection(callbacks: List[Any], sens: Selector = None, labels: Selector = None) -> int:
    """Call ``set_selection(sens, labels)`` on every fairness callback in ``callbacks``; returns how many."""
    hit = 0
    for cb in callbacks:
        if hasattr(cb, "set_selection"):
            cb.set_selection(sens, labels)
            hit += 1
    return hit


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
    return FairnessCLI(TabularClassifier, TabularDataModule, args=args, run=run, save_config_callback=None,
                       parser_kwargs={"default_env": False})


if __name__ == "__main__":  # pragma: no cover
    cli_main()
