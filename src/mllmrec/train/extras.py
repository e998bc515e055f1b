"""Console manners of the entry points: the resolved config tree at start, and Lightning's noise
filtered (tips and deprecations that a user of this project cannot act on).

Torch-free (imported by ``train.py`` before it knows whether a finished job is skipped).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["LIGHTNING_NOISE", "print_config_tree", "quiet_lightning", "LightningTipFilter"]

#: messages of warnings Lightning emits on every CPU demo run that say nothing about this project's
#: runs: the evaluation loaders are in-memory user batches (workers would only copy them), an epoch of
#: the demo is one batch, and the LeafSpec deprecation comes from Lightning's own code. Matched by
#: message, so that any other warning still shows.
LIGHTNING_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The '\w+_dataloader' does not have many workers",
    r".*consider increasing the value of the `num_workers` argument",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)

# the first top-level keys in the tree (the rest follow in the config's order)
_TREE_ORDER = ("dataset", "mllm", "model", "graph", "data", "trainer")


class LightningTipFilter(logging.Filter):
    """Drops Lightning's advertising tips (``💡 Tip: ... try installing litlogger``) from its logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def quiet_lightning() -> None:
    """Install the warning filters of :data:`LIGHTNING_NOISE` and the tip filter, and drop Lightning's
    own console handlers (idempotent).

    Lightning adds console handlers to its loggers; the root handlers (Hydra's, which also write the
    run's log file, or :func:`mllmrec.train.cli.setup_console_logging`) already print, so with
    Lightning's every line would appear twice.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).handlers.clear()
    for pattern in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningTipFilter) for f in logger.filters):
            logger.addFilter(LightningTipFilter())


def print_config_tree(cfg: DictConfig, order: Sequence[str] = _TREE_ORDER, resolve: bool = True) -> str:
    """Print the config as a rich tree, one branch per top-level key (lightning-hydra-template's
    ``extras.print_config``), and return the printed text. The ``hydra`` node is left out.

    Values are resolved where they can be (``resolve``); a value that cannot be resolved here (e.g. a
    ``${hydra:...}`` outside a Hydra run) is shown as written.
    """
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order and k != "hydra"]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg._get_node(key)  # noqa: SLF001 (OmegaConf has no public node accessor)
        try:
            value = OmegaConf.to_container(cfg[key], resolve=resolve) if isinstance(cfg[key], DictConfig) else cfg[key]
        except Exception:  # noqa: BLE001 - an unresolvable interpolation: show it as written
            value = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else str(node._value())
        text = OmegaConf.to_yaml(value) if isinstance(value, (dict, list)) else str(value)
        branch.add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    console = Console()
    with console.capture() as capture:
        console.print(tree)
    printed = capture.get()
    print(printed, end="")
    return printed
