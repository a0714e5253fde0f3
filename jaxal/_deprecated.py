"""Old import paths kept for one release (0.2) after the re-folder, with a warning.

Each old module file calls :func:`alias`, which warns once and makes the old name an
alias of the new module (``sys.modules`` entry replaced), so attribute access and
monkeypatching reach the real module. Old names whose contents were split over
several modules are served by :func:`merge`. Both go in 0.3.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["alias", "merge", "MOVED"]

# Where everything went in 0.2 (old module -> new module(s)); the table in docs/architecture.md.
MOVED: dict[str, tuple[str, ...]] = {
    "jaxal.linalg": ("jaxal.ops.linalg",),
    "jaxal.spectral": ("jaxal.ops.spectral",),
    "jaxal.strategies.kmeanspp": ("jaxal.ops.kmeanspp",),
    "jaxal.strategies.common": ("jaxal.model", "jaxal.strategies.base"),
    "jaxal.strategies.lookahead": ("jaxal.strategies.model_change",),
    "jaxal.train": ("jaxal.training.train",),
    "jaxal.ssl": ("jaxal.training.ssl",),
    "jaxal.augment": ("jaxal.training.augment",),
    "jaxal.frozen": ("jaxal.training.frozen",),
    "jaxal.loop": ("jaxal.experiment.loop", "jaxal.experiment.config"),
    "jaxal.checkpoint": ("jaxal.experiment.checkpoint",),
    "jaxal.compare": ("jaxal.experiment.grid",),
    "jaxal.evaluate": ("jaxal.experiment.records", "jaxal.experiment.plots", "jaxal.experiment.stats"),
    "jaxal.metrics": ("jaxal.experiment.stats",),
    "jaxal.report": ("jaxal.experiment.report",),
    "jaxal.protocols": ("jaxal.experiment.protocols",),
}


def _warn(old: str, new: tuple[str, ...]) -> None:
    warnings.warn(
        f"{old} moved to {' / '.join(new)} in jaxal 0.2; the old path goes in 0.3",
        DeprecationWarning,
        stacklevel=4,
    )


def alias(old: str) -> None:
    """Make module ``old`` an alias of its single new home."""
    new = MOVED[old]
    _warn(old, new)
    sys.modules[old] = importlib.import_module(new[0])


def merge(old: str) -> None:
    """Fill module ``old`` with the public and private names of its new homes."""
    new = MOVED[old]
    _warn(old, new)
    module: ModuleType = sys.modules[old]
    for name in new:
        for k, v in vars(importlib.import_module(name)).items():
            if not k.startswith("__"):
                module.__dict__.setdefault(k, v)
