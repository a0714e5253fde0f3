"""Input checks shared by strategies, training and the loop.

Every check raises ``ValueError`` naming the offending argument, so a user sees what
was wrong with *their* input rather than a shape error from deep inside XLA.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = [
    "check_budget",
    "check_finite",
    "check_labels",
    "check_same_length",
    "check_nonempty",
    "check_choice",
]


def check_nonempty(name: str, x: Any) -> None:
    """Raise if ``x`` has no rows."""
    if np.ndim(x) == 0 or np.shape(x)[0] == 0:
        raise ValueError(f"{name} is empty: it must hold at least one example")


def check_budget(budget: Any, pool_size: int, name: str = "budget") -> int:
    """Return ``budget`` as an int after checking ``0 < budget <= pool_size``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {budget!r}")
    budget = int(budget)
    if budget <= 0:
        raise ValueError(f"{name} must be positive, got {budget}")
    if pool_size <= 0:
        raise ValueError("the pool is empty: nothing left to query")
    if budget > pool_size:
        raise ValueError(f"{name}={budget} is larger than the pool ({pool_size} examples)")
    return budget


def check_finite(name: str, x: Any) -> None:
    """Raise if a floating array holds NaN or inf."""
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
        a32 = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a32)):
            bad = int(np.size(a32) - np.count_nonzero(np.isfinite(a32)))
            raise ValueError(f"{name} contains {bad} NaN/inf value(s)")


def check_labels(name: str, y: Any, num_classes: int) -> None:
    """Raise unless ``y`` is a 1-D integer array with values in ``[0, num_classes)``."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer labels, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}): min {a.min()}, max {a.max()}"
        )


def check_same_length(**arrays: Any) -> None:
    """Raise unless every named array has the same number of rows."""
    lengths = {k: int(np.shape(v)[0]) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"mismatched lengths: {desc}")


def check_choice(kind: str, value: str, valid: Iterable[str]) -> None:
    """Raise for an unknown name, listing the valid ones."""
    valid = sorted(valid)
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
