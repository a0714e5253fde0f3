"""The annotator-in-the-loop object: sequential look-ahead without retraining.

:class:`Sequential` wraps the pure state machine (``init`` / ``add`` / ``best`` of
:mod:`jaxal.lookahead.core`) for interactive use: after each true label the
predictions and covariance are updated by the exact rank-1 rule in ``O(|S|²)`` — no
SGD, no new kernel until the next retrain.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from jaxal.lookahead import core, from_model
from jaxal.lookahead.from_model import init_from_model
from jaxal.model import Model
from jaxal.model import num_classes as _num_classes
from jaxal.validation import check_choice, check_labels, check_nonempty, check_same_length

__all__ = ["Sequential"]


def __getattr__(name: str):
    # 0.1 names that moved to :mod:`jaxal.lookahead.from_model` (this module's
    # ``init_from_model`` import keeps working without a warning: Sequential uses it).
    moved = {"kernel_blocks": "kernel_blocks", "KERNELS": "APPROXIMATIONS", "CONTRACTIONS": "CONTRACTIONS"}
    if name in moved:
        warnings.warn(f"jaxal.lookahead.sequential.{name} moved to jaxal.lookahead.from_model.{moved[name]} "
                      "in jaxal 0.2 (the old name goes in 0.3)", DeprecationWarning, stacklevel=2)
        return getattr(from_model, moved[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Sequential:
    """Sequential look-ahead for an annotator in the loop (the paper's §3 sequential mode).

    ::

        seq = jaxal.lookahead.Sequential(model, xl, yl, x_pool=xu)
        i = seq.best(); seq = seq.add(i, label_from_annotator(i))

    Each :meth:`add` returns a *new* object (the state is an immutable pytree,
    :class:`~jaxal.lookahead.core.LookaheadState`); the update is the exact rank-1
    conditioning on the true label, equal to a fresh kernel solve with the point added.

    Args:
      model: the trained model (squared-loss training matches the linearisation).
      x_labeled, y_labeled: ``[L, ...]`` inputs and ``[L]`` int labels.
      x_pool: ``[U, ...]`` candidates, also the evaluation set ``S`` (cost ``O(U²)``
        memory: pass a subset for large pools).
      objective: ``"mlmoc"``, ``"emoc"``, ``"eer"`` or ``"flip_rate"``.
      probability: ``"softmax"`` or ``"simplex"`` (EMOC's label distribution, EER's map).
      approximation, contraction, subset, depth, jitter, variance_floor: see
        :func:`init_from_model`.

    Attributes:
      info: the :class:`~jaxal.lookahead.core.LookaheadInfo` of the initial solve
        (``relative_jitter`` and ``jitter_ok`` of the ``K_LL`` Cholesky; a
        :class:`~jaxal.ops.linalg.JitterWarning` was issued if it was large or failed).
    """

    def __init__(
        self,
        model: Model,
        x_labeled: Any,
        y_labeled: Any,
        *,
        x_pool: Any,
        objective: str = "mlmoc",
        probability: str = "softmax",
        num_classes: int | None = None,
        approximation: str = "empirical",
        contraction: str = "single_logit",
        subset: Any = "all",
        depth: int | None = None,
        jitter: float | None = None,
        variance_floor: float | None = None,
    ) -> None:
        check_choice("objective", objective, core.OBJECTIVES)
        check_choice("probability", probability, core.PROBABILITY_MAPS)
        check_nonempty("x_pool", x_pool)
        check_same_length(x_labeled=x_labeled, y_labeled=y_labeled)
        c = num_classes or _num_classes(model, np.asarray(x_pool))
        check_labels("y_labeled", np.asarray(y_labeled), c)
        self.objective, self.probability = objective, probability
        self.state, self.info = init_from_model(
            model, x_labeled, y_labeled, x_pool, approximation=approximation, contraction=contraction, subset=subset,
            depth=depth, jitter=jitter, variance_floor=variance_floor,
        )

    @classmethod
    def _from_state(cls, other: "Sequential", state: core.LookaheadState) -> "Sequential":
        return cls.from_state(state, other.objective, other.probability, other.info)

    @classmethod
    def from_state(cls, state: core.LookaheadState, objective: str = "mlmoc", probability: str = "softmax",
                   info: core.LookaheadInfo | None = None) -> "Sequential":
        """A :class:`Sequential` over a stored state (e.g. one a labeling session saved), with no new solve."""
        check_choice("objective", objective, core.OBJECTIVES)
        check_choice("probability", probability, core.PROBABILITY_MAPS)
        new = cls.__new__(cls)
        new.objective, new.probability, new.info, new.state = objective, probability, info, state
        return new

    def scores(self) -> np.ndarray:
        """``[U]`` current scores (``-inf`` for points already added; larger is better)."""
        return np.asarray(core.scores(self.state, self.objective, self.probability)[0])

    def best(self) -> int:
        """Pool index of the best candidate not yet added."""
        return int(np.argmax(self.scores()))

    def add(self, i: int, y: int) -> "Sequential":
        """A new :class:`Sequential` conditioned on the true label ``y`` of pool row ``i``."""
        n, c = self.state.mean.shape
        if not 0 <= int(i) < n:
            raise ValueError(f"i must be a pool index in [0, {n}), got {i}")
        if not 0 <= int(y) < c:
            raise ValueError(f"y must be a class in [0, {c}), got {y}")
        return Sequential._from_state(self, core.add(self.state, int(i), int(y)))

    def predictions(self) -> np.ndarray:
        """``[U, C]`` linearised predictions on the pool given every label so far."""
        return np.asarray(self.state.mean)

    @property
    def queried(self) -> np.ndarray:
        """``[U]`` bool, pool rows already added."""
        return np.asarray(self.state.queried)
