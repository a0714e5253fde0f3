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
  (0: every prediction certain, 1: every prediction uniform);
- ``output_scale``: the mean norm ``‖f(x)‖₂`` of the network's outputs on the stop set.

More come from the round's query when its strategy measures them, on the model
*before* the round's labels:

- ``max_output_change``: a look-ahead's best MLMOC / EMOC score, the largest change
  ``Σ_{x∈S} ‖Δf(x)‖`` one more label is predicted to cause, and
  ``relative_output_change``, the same divided by ``|S|`` times the previous model's
  ``output_scale``: the change as a fraction of the outputs' size. The raw score is not
  comparable across rounds when the outputs grow (cross-entropy training sharpens the
  logits round after round, so the raw score rises as the model settles);
- ``lambda_min``: CRC's λ⁺min of the chosen group's Gram, and ``lambda_min_per_label``,
  the same divided by the labeled-set size after the round: the Gram is a sum over
  rows, so its eigenvalues grow with the labels, while those of the per-row Gram
  ``K / n`` (the rate the training dynamics see) level off.

A regression run (real outputs, no classes) records ``output_scale`` and
``output_change``, the root-mean-square change ``Δf`` of the outputs on the stop set's
unlabeled rows since the previous round (in target units; ``None`` in round 0), with
``kappa``, ``change`` and ``uncertainty`` left ``None``: the stopping rules that read
them say "n/a".

The cost is two forward passes over the stop set per round (the previous model's
predictions are recomputed rather than carried, so checkpoints keep their format).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import models as models_lib
from jaxal.model import predict_logits_then
from jaxal.ops.random import host_permutation
from jaxal.stopping import cohen_kappa

__all__ = ["STOP_SET_SIZE", "stop_set", "predict_stop_set", "StopSetPredictions", "round_signals", "query_signals",
           "predict_outputs", "regression_signals"]

STOP_SET_SIZE = 1000
_OUTPUT_CHANGE_OBJECTIVES = ("mlmoc", "emoc")


def stop_set(key: jax.Array, n: int, size: int = STOP_SET_SIZE) -> np.ndarray:
    """Sorted rows of the run's stop set: ``min(n, size)`` uniform rows of ``[0, n)``."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(host_permutation(key, n)[:size]).astype(np.int64)


class StopSetPredictions(NamedTuple):
    """A model's predictions on the stop set: ``classes [S]`` int64, normalised
    ``entropy [S]`` and output ``norm [S]`` (``‖f(x)‖₂`` of the logits)."""

    classes: np.ndarray
    entropy: np.ndarray
    norm: np.ndarray


def _summary(logits: jax.Array) -> jax.Array:
    """``[B, 3]``: the predicted class, the normalised entropy and the logits' norm of each row."""
    c = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / jnp.log(float(max(c, 2)))
    return jnp.stack([jnp.argmax(logits, axis=-1).astype(jnp.float32), ent, jnp.linalg.norm(logits, axis=-1)],
                     axis=-1)


def predict_stop_set(module: Any, variables: Any, x_stop: Any) -> StopSetPredictions:
    """A model's :class:`StopSetPredictions`."""
    out = np.asarray(predict_logits_then(models_lib.as_model(module, variables), x_stop, _summary), dtype=np.float64)
    return StopSetPredictions(out[:, 0].astype(np.int64), out[:, 1], out[:, 2])


def round_signals(
    current: StopSetPredictions,
    previous: StopSetPredictions | None,
    unlabeled: np.ndarray,
    num_classes: int,
) -> dict[str, float | None]:
    """``kappa``, ``change``, ``uncertainty`` and ``output_scale`` from the stop-set predictions.

    Args:
      current, previous: :func:`predict_stop_set` of this round's and the previous
        round's model (``previous=None`` in round 0).
      unlabeled: ``[S]`` bool, stop-set rows not labeled after this round.
      num_classes: ``C``.
    """
    pred, ent = current.classes, current.entropy
    unlabeled = np.asarray(unlabeled, dtype=bool)
    out: dict[str, float | None] = {
        "uncertainty": float(np.mean(ent[unlabeled])) if unlabeled.any() else 0.0,
        "kappa": None,
        "change": None,
        "output_scale": float(np.mean(current.norm)),
    }
    if previous is not None:
        out["kappa"] = float(cohen_kappa(previous[0], pred, num_classes))
        changed = previous[0] != pred
        out["change"] = float(np.mean(changed[unlabeled])) if unlabeled.any() else 0.0
    return out


def predict_outputs(module: Any, variables: Any, x_stop: Any) -> np.ndarray:
    """A regression model's outputs ``[S, D]`` (float64) on the stop set."""
    return np.asarray(predict_logits_then(models_lib.as_model(module, variables), x_stop, _identity), np.float64)


def _identity(a: jax.Array) -> jax.Array:
    return a


def regression_signals(current: np.ndarray, previous: np.ndarray | None, unlabeled: np.ndarray) -> dict[str, float | None]:
    """``output_scale`` (mean ``‖f‖₂``) and ``output_change`` (RMS of ``f − f_prev`` over the
    unlabeled stop-set rows) of a regression model's stop-set outputs ``[S, D]``."""
    unlabeled = np.asarray(unlabeled, dtype=bool)
    out: dict[str, float | None] = {"uncertainty": None, "kappa": None, "change": None,
                                    "output_scale": float(np.mean(np.linalg.norm(current, axis=-1))),
                                    "output_change": None}
    if previous is not None and unlabeled.any():
        out["output_change"] = float(np.sqrt(np.mean(np.sum((current - previous)[unlabeled] ** 2, axis=-1))))
    return out


def query_signals(info: Mapping[str, Any], previous_scale: float | None, n_labeled: int) -> dict[str, float | None]:
    """The query's signals from its ``info`` (``None`` when the strategy does not measure them).

    Args:
      info: the strategy's ``info`` of the round's query.
      previous_scale: ``output_scale`` of the model the query ran on (``None`` in round 0).
      n_labeled: the labeled-set size after the round.
    """
    out: dict[str, float | None] = {"max_output_change": None, "relative_output_change": None,
                                    "lambda_min": None, "lambda_min_per_label": None}
    if info.get("objective") in _OUTPUT_CHANGE_OBJECTIVES and info.get("max_score") is not None:
        value = float(info["max_score"])
        if np.isfinite(value):
            out["max_output_change"] = value
            rows = int(info.get("eval_size") or 0)
            if previous_scale and rows:
                out["relative_output_change"] = value / (rows * previous_scale)
    if info.get("group_scores"):
        out["lambda_min"] = float(info["group_scores"][0])
        out["lambda_min_per_label"] = out["lambda_min"] / max(int(n_labeled), 1)
    return out
