"""The paper's look-ahead baselines (Mohamadi et al. 2022, Fig. 1b).

- :func:`relu_ntk`: the *infinite-width* NTK of a fully connected ReLU network, by the
  analytic arc-cosine recursion, to use in place of the empirical kernel. It ignores
  the trained weights, which is why it predicts retraining worse.
- :func:`one_step_sgd_scores`: move the trained weights by one SGD step on the
  training loss at ``(x', y')`` and score the moved outputs — the cheap "look-ahead"
  that ignores the rest of the labeled set.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.lookahead.core import OBJECTIVES, PROBABILITY_MAPS, label_targets, reduce_objective
from jaxal.model import Model
from jaxal.validation import check_choice

Array = jax.Array

__all__ = ["relu_ntk", "mlp_depth", "one_step_sgd_outputs", "one_step_sgd_scores"]


def _arccos_terms(s12: Array, s11: Array, s22: Array) -> tuple[Array, Array]:
    """``E[relu(u) relu(v)]`` and ``E[relu'(u) relu'(v)]`` for ``(u, v) ~ N(0, [[s11, s12], [s12, s22]])``.

    Arc-cosine kernels of order 1 and 0 (Cho & Saul 2009):
    ``√(s11 s22)/(2π) (sin θ + (π − θ) cos θ)`` and ``(π − θ)/(2π)``, ``cos θ = s12/√(s11 s22)``.
    """
    norm = jnp.sqrt(s11 * s22)
    cos = jnp.clip(s12 / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0)
    theta = jnp.arccos(cos)
    k1 = norm / (2 * jnp.pi) * (jnp.sin(theta) + (jnp.pi - theta) * cos)
    k0 = (jnp.pi - theta) / (2 * jnp.pi)
    return k1, k0


@functools.partial(jax.jit, static_argnames=("depth",))
def relu_ntk(
    x1: Array,
    x2: Array | None = None,
    *,
    depth: int,
    weight_variance: float = 1.0,
    bias_variance: float = 0.0,
) -> Array:
    """Infinite-width NTK ``[n1, n2]`` of a ReLU MLP with ``depth`` hidden layers (NTK parametrisation).

    Network: ``z⁰ = σ_w W⁰ x/√d + σ_b b⁰``, ``zʰ = σ_w Wʰ relu(zʰ⁻¹)/√n + σ_b bʰ``,
    output ``z^depth`` (one logit; the kernel of a C-logit net is this ``⊗ I_C``).
    Recursion (Jacot et al. 2018; Arora et al. 2019)::

        Σ⁰ = σ_w² x·x'/d + σ_b²,           Θ⁰ = Σ⁰
        Σʰ = σ_w² E[relu relu] + σ_b²,     Σ̇ʰ = σ_w² E[relu' relu']     (under Σʰ⁻¹)
        Θʰ = Θʰ⁻¹ Σ̇ʰ + Σʰ

    The defaults (``σ_w² = 1``, ``σ_b² = 0``) are the infinite-width limit of Flax's
    default ``lecun_normal`` / zero-bias initialisation. Inputs are flattened.
    """
    x1 = jnp.reshape(x1, (x1.shape[0], -1))
    x2 = x1 if x2 is None else jnp.reshape(x2, (x2.shape[0], -1))
    d = x1.shape[1]
    sw, sb = weight_variance, bias_variance
    s12 = sw * (x1 @ x2.T) / d + sb
    s11 = sw * jnp.sum(x1 * x1, axis=1) / d + sb
    s22 = sw * jnp.sum(x2 * x2, axis=1) / d + sb
    theta = s12
    for _ in range(depth):
        k1, k0 = _arccos_terms(s12, s11[:, None], s22[None, :])
        s12 = sw * k1 + sb
        theta = theta * (sw * k0) + s12
        s11 = sw * s11 / 2 + sb  # E[relu(u)²] = s/2
        s22 = sw * s22 / 2 + sb
    return theta


def mlp_depth(model: Model) -> int:
    """Number of hidden Dense layers of an MLP body: its 2-D ``kernel`` leaves."""
    leaves = jax.tree_util.tree_leaves_with_path(model.params["body"])
    n = sum(1 for path, leaf in leaves if getattr(leaf, "ndim", 0) == 2 and "kernel" in jax.tree_util.keystr(path))
    if n == 0:
        raise ValueError("kernel='infinite' needs an MLP body with Dense layers (pass depth=...)")
    return n


def _squared_loss(model: Model, params, x: Array, target: Array) -> Array:
    # jaxal.train's squared loss for one example: sum_c (f_c(x) − onehot(y)_c)².
    out = model.apply(params, x[None])[0]
    return jnp.sum((out - target) ** 2)


def one_step_sgd_outputs(model: Model, x_eval: Array, x_cand: Array, target: Array, learning_rate: float) -> Array:
    """Outputs ``[S, C]`` on ``x_eval`` after one SGD step of the squared loss on ``(x_cand, target)``.

    ``θ⁺ = θ − lr ∇_θ Σ_c (f_c(x') − y'_c)²`` from the model's weights.
    """
    grads = jax.grad(lambda p: _squared_loss(model, p, x_cand, target))(model.params)
    moved = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, model.params, grads)
    return model.apply(moved, x_eval)


@functools.partial(jax.jit, static_argnames=("objective", "probability", "chunk_size"))
def _sgd_scores(model, x_eval, f_eval, cand, learning_rate, objective, probability, chunk_size):
    n_c = cand.shape[0]
    n_chunks = math.ceil(n_c / chunk_size)
    idx = jnp.minimum(jnp.arange(n_chunks * chunk_size), n_c - 1).reshape(n_chunks, chunk_size)

    def chunk(j):
        targets, weights = label_targets(f_eval[cand[j]], objective, probability)  # [b, Y, C], [b, Y]
        step = lambda xc, t: one_step_sgd_outputs(model, x_eval, xc, t, learning_rate)  # noqa: E731
        per_label = jax.vmap(step, in_axes=(None, 0))
        new = jax.vmap(per_label)(x_eval[cand[j]], targets)  # [b, Y, S, C]
        new = jnp.transpose(new, (2, 0, 1, 3))
        change = new - f_eval[:, None, None, :]
        return reduce_objective(objective, change, new, f_eval, weights, probability)

    return jax.lax.map(chunk, idx).reshape(-1)[:n_c]


def one_step_sgd_scores(
    model: Model,
    x_eval: Array,
    *,
    candidates: Array | None = None,
    objective: str = "mlmoc",
    learning_rate: float = 0.01,
    probability: str = "softmax",
    chunk_size: int | None = None,
) -> Array:
    """Scores ``[m]`` of candidates (rows of ``x_eval``) by the one-step-SGD look-ahead.

    The same objectives as the kernel look-ahead, with ``f⁺`` the network after one SGD
    step on ``(x', y')`` (:func:`one_step_sgd_outputs`) and the reference ``f``; vmapped
    over candidates (and labels for ``emoc``/``eer``) in chunks. Cost: one forward pass
    over ``x_eval`` per candidate and label.

    Args:
      model: the trained model.
      x_eval: ``[S, ...]`` evaluation set.
      candidates: ``[m]`` rows of ``x_eval`` to score (default all).
      learning_rate: SGD step size (a free parameter of this baseline).
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("probability", probability, PROBABILITY_MAPS)
    x_eval = jnp.asarray(x_eval)
    f_eval = model.logits(x_eval)
    n_s, c = f_eval.shape
    cand = jnp.arange(n_s) if candidates is None else jnp.asarray(candidates, jnp.int32)
    n_labels = 1 if OBJECTIVES[objective] == "pseudo" else c
    if chunk_size is None:
        n_params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(model.params))
        chunk_size = max(1, (1 << 24) // (n_labels * (2 * n_params + 4 * n_s * c)))
    chunk_size = int(min(chunk_size, cand.shape[0]))
    return _sgd_scores(model, x_eval, f_eval, cand, learning_rate, objective, probability, chunk_size)
