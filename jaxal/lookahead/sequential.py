"""From a trained model to a look-ahead state, and the annotator-in-the-loop object.

:func:`init_from_model` computes the network outputs and the kernel blocks on
``L ∪ S`` (one kernel call) and hands them to :func:`jaxal.lookahead.core.init`.
:class:`Sequential` wraps the pure state machine (``init`` / ``add`` / ``best``) for
interactive use: after each true label the predictions and covariance are updated by
the exact rank-1 rule in ``O(|S|²)`` — no SGD, no new kernel until the next retrain.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.lookahead import core
from jaxal.lookahead.baselines import mlp_depth, mlp_input_dim, mlp_widths, relu_ntk_ntk_param, relu_ntk_standard
from jaxal.model import Model, num_classes as _num_classes
from jaxal.validation import check_choice, check_labels, check_nonempty, check_same_length

__all__ = ["KERNELS", "CONTRACTIONS", "kernel_blocks", "init_from_model", "Sequential"]

#: ``empirical``: the trained network's NTK; ``infinite``: the infinite-width limit of the
#: same (standard-parametrised Flax) MLP at initialisation; ``infinite_ntk_param``: the
#: infinite-width limit in the NTK parametrisation (a different kernel; a contrast).
KERNELS = ("empirical", "infinite", "infinite_ntk_param")
CONTRACTIONS = ("single_logit", "sum_logits", "trace", "full")


def kernel_blocks(
    model: Model,
    x_labeled: Any,
    x_eval: Any,
    *,
    kernel: str = "empirical",
    contraction: str = "single_logit",
    subset: Any = "all",
    depth: int | None = None,
    memory_bytes: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(K_LL, K_SL, K_SS)`` from one kernel call on ``[x_labeled; x_eval]``.

    ``kernel="empirical"``: :func:`jaxal.ntk.kernel` with ``contraction`` and ``subset``
    (scalar ``[n1, n2]`` or, for ``"full"``, ``[n1, n2, C, C]``).
    ``kernel="infinite"``: :func:`~jaxal.lookahead.baselines.relu_ntk_standard`, the
    infinite-width NTK of the model's own architecture (a ReLU MLP in Flax's standard
    parametrisation, widths read from its Dense kernels; ``depth`` must be ``None`` or
    the model's depth). ``kernel="infinite_ntk_param"``:
    :func:`~jaxal.lookahead.baselines.relu_ntk_ntk_param` with the model's number of
    hidden layers (or ``depth``). Both scalar, used ``⊗ I_C``.
    """
    check_choice("kernel", kernel, KERNELS)
    check_choice("contraction", contraction, CONTRACTIONS)
    n_l = int(np.shape(x_labeled)[0])
    x = jnp.concatenate([jnp.asarray(x_labeled, jnp.asarray(x_eval).dtype), jnp.asarray(x_eval)], axis=0)
    if kernel == "empirical":
        from jaxal.ntk import kernel as ntk_kernel

        k = ntk_kernel(model, x, contraction=contraction, subset=subset, memory_bytes=memory_bytes)
    elif kernel == "infinite":
        widths = mlp_widths(model)
        if depth is not None and depth != len(widths):
            raise ValueError(f"kernel='infinite' reads the depth from the model ({len(widths)} hidden layers); "
                             f"depth={depth} applies to kernel='infinite_ntk_param'")
        d = int(np.prod(x.shape[1:]))
        if mlp_input_dim(model) != d:
            raise ValueError(f"the model's first Dense layer takes {mlp_input_dim(model)} inputs, x has {d}")
        k = relu_ntk_standard(x, widths=widths)
    else:
        k = relu_ntk_ntk_param(x, depth=depth if depth is not None else mlp_depth(model))
    return k[:n_l, :n_l], k[n_l:, :n_l], k[n_l:, n_l:]


@jax.jit
def _logits(model: Model, x: jax.Array) -> jax.Array:
    # Jitted once per model functions and shape (a fresh ``jax.jit`` per call would recompile).
    return model.logits(x)


def init_from_model(
    model: Model,
    x_labeled: Any,
    y_labeled: Any,
    x_eval: Any,
    *,
    kernel: str = "empirical",
    contraction: str = "single_logit",
    subset: Any = "all",
    depth: int | None = None,
    jitter: float | None = None,
    variance_floor: float | None = None,
    memory_bytes: int | None = None,
) -> tuple[core.LookaheadState, core.LookaheadInfo]:
    """Look-ahead state on ``x_eval`` (``[S, ...]``) for a trained model and its labeled set."""
    from jaxal.strategies.common import batched  # lazy: jaxal.strategies imports this package

    blocks = kernel_blocks(
        model, x_labeled, x_eval, kernel=kernel, contraction=contraction, subset=subset, depth=depth,
        memory_bytes=memory_bytes,
    )
    f_eval = batched(lambda xb: _logits(model, xb), x_eval)
    f_lab = batched(lambda xb: _logits(model, xb), x_labeled) if np.shape(x_labeled)[0] else f_eval[:0]
    dtype = blocks[0].dtype
    return core.init(
        *blocks, f_lab.astype(dtype), f_eval.astype(dtype), jnp.asarray(y_labeled, jnp.int32),
        jitter=jitter, variance_floor=variance_floor,
    )


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
      kernel, contraction, subset, depth, jitter, variance_floor: see
        :func:`init_from_model`.
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
        kernel: str = "empirical",
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
            model, x_labeled, y_labeled, x_pool, kernel=kernel, contraction=contraction, subset=subset,
            depth=depth, jitter=jitter, variance_floor=variance_floor,
        )

    @classmethod
    def _from_state(cls, other: "Sequential", state: core.LookaheadState) -> "Sequential":
        new = cls.__new__(cls)
        new.objective, new.probability, new.info, new.state = other.objective, other.probability, other.info, state
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
