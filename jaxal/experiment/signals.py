"""The stopping signals every round records (read by :mod:`jaxal.stopping`).

After a round's training the model predicts a fixed *stop set*: a uniform sample of
the pool drawn once per run from the seed (``STOP_SET_SIZE`` rows, or the whole pool
when smaller), as Bloodgood & Vijay-Shanker (2009) prescribe, so consecutive rounds
are compared on the same points whatever was labeled. From those predictions:

- ``kappa``: Cohen's κ between this round's and the previous round's predicted
  classes on the whole stop set (``None`` in round 0);
- ``change``: the fraction of the stop set's still-unlabeled rows whose predicted
  class changed since the previous round (``None`` in round 0);
- ``uncertainty``: the mean predictive entropy over those rows divided by ``log C``
  (0: every prediction certain, 1: every prediction uniform).

Two more come from the round's query when its strategy measures them:
``max_output_change`` (a look-ahead's best MLMOC / EMOC score, the largest output
change one more label is predicted to cause) and ``lambda_min`` (CRC's λ⁺min of the
chosen group). Both are measured on the model *before* the round's labels.

The cost is two forward passes over the stop set per round (the previous model's
predictions are recomputed rather than carried, so checkpoints keep their format).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import models as models_lib
from jaxal.model import predict_probs_then
from jaxal.ops.random import host_permutation
from jaxal.stopping import cohen_kappa

__all__ = ["STOP_SET_SIZE", "stop_set", "predict_stop_set", "round_signals", "query_signals"]

STOP_SET_SIZE = 1000
_OUTPUT_CHANGE_OBJECTIVES = ("mlmoc", "emoc")


def stop_set(key: jax.Array, n: int, size: int = STOP_SET_SIZE) -> np.ndarray:
    """Sorted rows of the run's stop set: ``min(n, size)`` uniform rows of ``[0, n)``."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(host_permutation(key, n)[:size]).astype(np.int64)


def _class_and_entropy(probs: jax.Array) -> jax.Array:
    """``[B, 2]``: the predicted class and the normalised entropy of each row."""
    c = probs.shape[-1]
    ent = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-30)), 0.0), axis=-1)
    return jnp.stack([jnp.argmax(probs, axis=-1).astype(jnp.float32), ent / jnp.log(float(max(c, 2)))], axis=-1)


def predict_stop_set(module: Any, variables: Any, x_stop: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class [S] int64, normalised entropy [S])`` of a model on the stop set."""
    out = np.asarray(predict_probs_then(models_lib.as_model(module, variables), x_stop, _class_and_entropy))
    return out[:, 0].astype(np.int64), out[:, 1].astype(np.float64)


def round_signals(
    current: tuple[np.ndarray, np.ndarray],
    previous: tuple[np.ndarray, np.ndarray] | None,
    unlabeled: np.ndarray,
    num_classes: int,
) -> dict[str, float | None]:
    """``kappa``, ``change`` and ``uncertainty`` from the stop-set predictions.

    Args:
      current, previous: :func:`predict_stop_set` of this round's and the previous
        round's model (``previous=None`` in round 0).
      unlabeled: ``[S]`` bool, stop-set rows not labeled after this round.
      num_classes: ``C``.
    """
    pred, ent = current
    unlabeled = np.asarray(unlabeled, dtype=bool)
    out: dict[str, float | None] = {
        "uncertainty": float(np.mean(ent[unlabeled])) if unlabeled.any() else 0.0,
        "kappa": None,
        "change": None,
    }
    if previous is not None:
        out["kappa"] = float(cohen_kappa(previous[0], pred, num_classes))
        changed = previous[0] != pred
        out["change"] = float(np.mean(changed[unlabeled])) if unlabeled.any() else 0.0
    return out


def query_signals(strategy: str, info: Mapping[str, Any]) -> dict[str, float | None]:
    """``max_output_change`` and ``lambda_min`` from a query's ``info`` (``None`` when the
    strategy does not measure them)."""
    out: dict[str, float | None] = {"max_output_change": None, "lambda_min": None}
    if info.get("objective") in _OUTPUT_CHANGE_OBJECTIVES and info.get("max_score") is not None:
        value = float(info["max_score"])
        out["max_output_change"] = value if np.isfinite(value) else None
    if info.get("group_scores"):
        out["lambda_min"] = float(info["group_scores"][0])
    return out
