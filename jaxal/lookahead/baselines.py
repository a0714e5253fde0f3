"""The paper's look-ahead baselines (Mohamadi et al. 2022, Fig. 1b).

- Infinite-width NTKs of a fully connected ReLU network, by the analytic arc-cosine
  recursion, to use in place of the empirical kernel. They ignore the trained weights,
  which is why they predict retraining worse than the empirical kernel.

  - :func:`relu_ntk_standard`: the limit of the network jaxal trains — Flax
    ``nn.Dense`` layers in the *standard* parametrisation (``lecun_normal`` weights of
    variance ``1/fan_in``, zero biases), widths read from the model. The kernel grows
    with the widths, as the empirical NTK of such a network does.
  - :func:`relu_ntk_ntk_param` (alias :func:`relu_ntk`): the limit in the *NTK
    parametrisation* (Jacot et al. 2018), independent of the widths. It is *not* the
    limit of a Flax network: its layers are weighted differently (the input layer
    counts as much as the last hidden layer), so even rescaled it is a different kernel.

- :func:`one_step_sgd_scores`: move the trained weights by one SGD step on the
  training loss at ``(x', y')`` and score the moved outputs — the cheap "look-ahead"
  that ignores the rest of the labeled set. By default each candidate's step size is
  the one that fits its residual under the linearisation (:func:`fitting_learning_rate`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.lookahead.core import OBJECTIVES, PROBABILITY_MAPS, label_targets, reduce_objective
from jaxal.model import Model
from jaxal.validation import check_choice

Array = jax.Array

__all__ = [
    "relu_ntk",
    "relu_ntk_ntk_param",
    "relu_ntk_standard",
    "mlp_depth",
    "mlp_widths",
    "mlp_input_dim",
    "fitting_learning_rate",
    "one_step_sgd_outputs",
    "one_step_sgd_scores",
]


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
def relu_ntk_ntk_param(
    x1: Array,
    x2: Array | None = None,
    *,
    depth: int,
    weight_variance: float = 1.0,
    bias_variance: float = 0.0,
) -> Array:
    """Infinite-width NTK ``[n1, n2]`` of a ReLU MLP with ``depth`` hidden layers, NTK parametrisation.

    Network: ``z⁰ = σ_w W⁰ x/√d + σ_b b⁰``, ``zʰ = σ_w Wʰ relu(zʰ⁻¹)/√n + σ_b bʰ``,
    output ``z^depth`` (one logit; the kernel of a C-logit net is this ``⊗ I_C``).
    Recursion (Jacot et al. 2018; Arora et al. 2019)::

        Σ⁰ = σ_w² x·x'/d + σ_b²,           Θ⁰ = Σ⁰
        Σʰ = σ_w² E[relu relu] + σ_b²,     Σ̇ʰ = σ_w² E[relu' relu']     (under Σʰ⁻¹)
        Θʰ = Θʰ⁻¹ Σ̇ʰ + Σʰ

    Every weight is a standard normal scaled by ``σ_w/√fan_in`` in the forward pass, so
    every layer's gradient is ``O(1)`` and the kernel does not depend on the widths.
    This is **not** the limit of a Flax ``nn.Dense`` network (standard parametrisation:
    the ``1/√fan_in`` sits in the initial weights, not the forward pass), whose kernel
    grows with the widths and weights layer ``l`` by its fan-in; use
    :func:`relu_ntk_standard` for that. Inputs are flattened.
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


#: the NTK-parametrisation limit under its historical name
relu_ntk = relu_ntk_ntk_param


@functools.partial(jax.jit, static_argnames=("widths",))
def relu_ntk_standard(x1: Array, x2: Array | None = None, *, widths: tuple[int, ...]) -> Array:
    """Infinite-width limit ``[n1, n2]`` of the empirical NTK of one logit of a Flax ReLU MLP.

    Network (standard parametrisation, Flax defaults): ``a⁰ = x`` (flattened, ``n₀ = d``),
    ``zˡ = Wˡ aˡ⁻¹ + bˡ`` with ``Wˡ`` of variance ``1/n_{l−1}`` (``lecun_normal``) and
    ``bˡ = 0`` at initialisation, ``aˡ = relu(zˡ)`` for the ``D`` hidden layers
    ``l = 1..D`` of widths ``widths = (n₁, …, n_D)``, and the logit ``f = z^{D+1}``.

    NNGP: ``K¹(x, x') = x·x'/d``, ``K^{l+1} = E[relu(u) relu(v)]`` and
    ``K̇ˡ = E[relu'(u) relu'(v)]`` with ``(u, v)`` centred Gaussian of covariance ``Kˡ``
    (arc-cosine kernels of order 1 and 0). The gradient of ``f`` with respect to
    ``Wˡ`` is ``δˡ aˡ⁻¹ᵀ`` with the backpropagated ``δˡ = ∂f/∂zˡ``, and with respect to
    ``bˡ`` it is ``δˡ``. As the widths grow,

    - ``aˡ⁻¹(x)·aˡ⁻¹(x') → n_{l−1} Kˡ(x, x')`` (a sum of ``n_{l−1}`` terms of mean
      ``Kˡ``; for ``l = 1`` it is ``x·x' = d K¹`` exactly),
    - ``δˡ(x)·δˡ(x') → Π_{l'=l}^{D} K̇^{l'}(x, x')`` (``δ^{D+1} = 1``; each layer back
      multiplies by ``relu'(z)relu'(z')`` summed over ``n_l`` units against weights of
      variance ``1/n_l``),

    so the NTK ``Σ_l (aˡ⁻¹·aˡ⁻¹' + 1)(δˡ·δˡ')`` converges to::

        Θ_SP(x, x') = Σ_{l=1}^{D+1} (n_{l−1} Kˡ(x, x') + 1) Π_{l'=l}^{D} K̇^{l'}(x, x')

    It grows linearly with the widths, like the empirical kernel, and is dominated by
    the last layers (the input layer enters with weight ``d``, not ``n``). For a net
    with ``C`` logits this is the kernel of each logit (the cross-logit blocks vanish),
    used ``⊗ I_C``.

    Args:
      x1: ``[n1, ...]`` inputs.
      x2: ``[n2, ...]`` inputs (default ``x1``).
      widths: hidden widths ``(n₁, …, n_D)`` (:func:`mlp_widths` reads them from a
        model); ``()`` is a linear model, ``Θ = x·x' + 1``.
    """
    x1 = jnp.reshape(x1, (x1.shape[0], -1))
    x2 = x1 if x2 is None else jnp.reshape(x2, (x2.shape[0], -1))
    d = x1.shape[1]
    s12 = (x1 @ x2.T) / d  # K¹
    s11 = jnp.sum(x1 * x1, axis=1) / d
    s22 = jnp.sum(x2 * x2, axis=1) / d
    theta = d * s12 + 1.0  # layer 1: (n₀ K¹ + 1), to be multiplied by K̇¹ … K̇^D
    for n_l in widths:  # Horner: Θ ← Θ K̇ˡ + (n_l K^{l+1} + 1)
        k1, k0 = _arccos_terms(s12, s11[:, None], s22[None, :])
        s12 = k1
        theta = theta * k0 + (n_l * s12 + 1.0)
        s11, s22 = s11 / 2, s22 / 2  # E[relu(u)²] = s/2
    return theta


def _dense_kernels(model: Model) -> list[tuple[str, Array]]:
    leaves = jax.tree_util.tree_leaves_with_path(model.params.get("body", {}))
    found = [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in leaves
        if getattr(leaf, "ndim", 0) == 2 and "kernel" in jax.tree_util.keystr(path)
    ]

    def natural(item: tuple[str, Array]) -> list:  # layers_2 before layers_10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item[0])]

    return sorted(found, key=natural)


def mlp_widths(model: Model) -> tuple[int, ...]:
    """Hidden widths ``(n₁, …, n_D)`` of an MLP body, from its Dense ``kernel`` shapes.

    Checks that the layers chain (each kernel's fan-in is the previous fan-out) and that
    the head's fan-in is the last width.
    """
    kernels = _dense_kernels(model)
    if not kernels:
        raise ValueError("an infinite-width kernel needs an MLP body with Dense layers")
    widths = tuple(int(k.shape[1]) for _, k in kernels)
    fan_in = [int(k.shape[0]) for _, k in kernels]
    head_params = model.params.get("head")
    head = head_params.get("kernel") if isinstance(head_params, Mapping) else None
    chained = fan_in[1:] == list(widths[:-1]) and (head is None or int(np.shape(head)[0]) == widths[-1])
    if not chained:
        raise ValueError(f"the body's Dense kernels do not chain as an MLP: {[np.shape(k) for _, k in kernels]}")
    return widths


def mlp_input_dim(model: Model) -> int:
    """Fan-in ``n₀`` of the first Dense layer of an MLP body."""
    return int(_dense_kernels(model)[0][1].shape[0])


def mlp_depth(model: Model) -> int:
    """Number of hidden Dense layers of an MLP body: its 2-D ``kernel`` leaves."""
    n = len(_dense_kernels(model))
    if n == 0:
        raise ValueError("an infinite-width kernel needs an MLP body with Dense layers (pass depth=...)")
    return n


def _squared_loss(model: Model, params, x: Array, target: Array) -> tuple[Array, Array]:
    # jaxal.training.train's squared loss for one example: ‖r‖² = Σ_c (f_c(x) − y_c)², and r.
    r = model.apply(params, x[None])[0] - target
    return jnp.sum(r * r), r


def _sq_norm(tree) -> Array:
    return sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(tree))


def fitting_learning_rate(loss: Array, grads) -> Array:
    """Step size that fits one example's residual under the linearisation: ``2‖r‖²/‖g‖²``.

    For the squared loss ``ℓ(θ) = ‖f(x'; θ) − y'‖² = ‖r‖²`` the gradient is
    ``g = 2 Jᵀ r`` (``J = ∂f(x')/∂θ``, ``[C, P]``), and one step ``θ⁺ = θ − η g`` moves
    the linearised outputs at ``x'`` by ``Δf = −η J g = −2η J Jᵀ r``. With
    ``η = 2‖r‖²/‖g‖² = ‖r‖² / (2 rᵀ J Jᵀ r)``:

    - ``rᵀ Δf = −‖r‖²``: the component of the change along the residual removes it
      exactly, whatever ``J Jᵀ`` is (no overshoot along ``r``);
    - if the logits' kernel is isotropic, ``J Jᵀ = Θ(x', x') I``, then
      ``η = 1/(2Θ(x', x'))`` and ``Δf = −r``: the step lands on ``y'``.

    A fixed step, by contrast, lands past ``y'`` once ``2η Θ(x', x') > 1`` and farther
    from it than it started once ``2η Θ(x', x') > 2`` — and ``Θ(x', x')`` grows with the
    widths of a standard-parametrised network. ``g = 0`` gives ``η = 0``.

    Args:
      loss: ``ℓ = ‖r‖²`` at the current weights.
      grads: ``∇_θ ℓ`` (a pytree).
    """
    g2 = _sq_norm(grads)
    return jnp.where(g2 > 0, 2.0 * loss / jnp.where(g2 > 0, g2, 1.0), 0.0)


def one_step_sgd_outputs(
    model: Model, x_eval: Array, x_cand: Array, target: Array, learning_rate: float | Array | None = None
) -> Array:
    """Outputs ``[S, C]`` on ``x_eval`` after one SGD step of the squared loss on ``(x_cand, target)``.

    ``θ⁺ = θ − η ∇_θ Σ_c (f_c(x') − y'_c)²`` from the model's weights, with
    ``η = learning_rate``, or, when it is ``None``, the candidate's
    :func:`fitting_learning_rate` (the step that fits ``y'`` under the linearisation).
    """
    (loss, _), grads = jax.value_and_grad(lambda p: _squared_loss(model, p, x_cand, target), has_aux=True)(
        model.params
    )
    lr = fitting_learning_rate(loss, grads) if learning_rate is None else learning_rate
    moved = jax.tree_util.tree_map(lambda p, g: p - lr * g, model.params, grads)
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
    learning_rate: float | None = None,
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
      learning_rate: SGD step size; ``None`` (default) takes for each candidate and
        label the step that fits its residual under the linearisation
        (:func:`fitting_learning_rate`: ``2‖r‖²/‖g‖²``, ``1/(2Θ(x', x'))`` for an
        isotropic logit kernel), so the step neither overshoots nor undershoots ``y'``.
        A fixed value is used as is (it overshoots ``y'`` where ``2·lr·Θ(x', x') > 1``).
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
