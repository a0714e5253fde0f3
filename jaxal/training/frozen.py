"""Frozen-encoder mode: a fixed encoder, a linear head, and an embedding cache.

The encoder is any ``encoder(x) -> h [n, d]`` (a pretrained Flax model's features, a
hand-made map) or none at all when the data set already *is* embeddings (a ``.npz``
with ``x_train``/``x_test`` as embeddings, loaded by ``jaxal.data.load(path)``). The
recommended flow, so that the encoder runs once per data set and not per round::

    cache = EmbeddingCache("runs/cache")                    # optional disk cache
    h_train = cache.get("resnet50-imagenet", encoder, x_train)
    pca = fit_pca(h_train, k=64)                             # optional, once per data set
    h_train = pca.transform(h_train)
    # every round:
    model, info = fit_head(key, h_train[labeled], y[labeled], C, HeadConfig())
    jaxal.select("mlmoc", key, model, x_labeled=h_train[labeled], ..., x_pool=h_train[pool])

The returned :class:`~jaxal.model.Model` has identity features (its inputs are the
embeddings), an empty body and a dense head ``{"kernel": [d, C], "bias": [C]}``, so
every strategy works on it and the head-only NTK (``(h·h' + 1) I_C``) is the exact
kernel of the model: the NTK look-ahead is then exact kernel regression (see
:func:`ridge_refit_with_point`).

Heads:

- closed form (:func:`ridge_fit`): ``min_W ‖[h, 1] W − Y‖² + lam ‖D (W − W0)‖²`` with
  one-hot ``Y``; ``D`` penalises the kernel rows and, only with ``penalize_bias=True``,
  the bias row (default: the bias is *not* penalised, as in sklearn's ``Ridge``);
- AdamW (:func:`train_linear_head`): softmax cross-entropy, full batch, early stopping
  on a seeded validation split.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxal.model import Model, batched, from_functions
from jaxal.ops.random import host_permutation
from jaxal.validation import check_choice, check_finite, check_labels, check_nonempty, check_same_length

Array = jax.Array

__all__ = [
    "SOLVERS",
    "HeadConfig",
    "ridge_fit",
    "ridge_refit_with_point",
    "linear_logits",
    "linear_model",
    "train_linear_head",
    "fit_head",
    "PCA",
    "fit_pca",
    "EmbeddingCache",
    "fingerprint",
]

SOLVERS = ("cholesky", "svd", "lstsq")
HEAD_METHODS = ("ridge", "adamw")


# --------------------------------------------------------------------------- ridge


def _augment(h: Array) -> Array:
    """``[h, 1]``: the bias as a constant feature, ``[n, d+1]``."""
    return jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)


def _pinv_factors(s: Array, lam: float) -> Array:
    """``s / (s² + lam)`` with singular values below ``eps·max(n,d)·s_max`` dropped
    (so ``lam = 0`` gives the pseudo-inverse, i.e. the min-norm solution)."""
    cutoff = jnp.finfo(s.dtype).eps * max(s.shape[0], 1) * 10 * jnp.max(s, initial=0.0)
    keep = s > cutoff
    return jnp.where(keep, s / jnp.where(keep, s * s + lam, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("solver", "penalize_bias"))
def _ridge_delta(h: Array, r: Array, lam: Array, solver: str, penalize_bias: bool) -> Array:
    """``argmin_Δ ‖[h,1] Δ − r‖² + lam ‖D Δ‖²``, ``Δ: [d+1, C]``."""
    n, d = h.shape
    phi = _augment(h)
    pen = jnp.ones(d + 1, h.dtype).at[d].set(1.0 if penalize_bias else 0.0)
    if solver == "cholesky":
        a = phi.T @ phi + lam * jnp.diag(pen)
        c = jax.scipy.linalg.cho_factor(a, lower=True)
        return jax.scipy.linalg.cho_solve(c, phi.T @ r)
    if solver == "lstsq":
        big = jnp.concatenate([phi, jnp.sqrt(lam) * jnp.diag(jnp.sqrt(pen))], axis=0)
        rhs = jnp.concatenate([r, jnp.zeros((d + 1, r.shape[1]), r.dtype)], axis=0)
        return jnp.linalg.lstsq(big, rhs)[0]
    # svd
    if penalize_bias:
        u, s, vt = jnp.linalg.svd(phi, full_matrices=False)
        return vt.T @ (_pinv_factors(s, lam)[:, None] * (u.T @ r))
    # unpenalised bias: centre, solve for the weights, then the bias is exact
    h_mean, r_mean = jnp.mean(h, axis=0), jnp.mean(r, axis=0)
    u, s, vt = jnp.linalg.svd(h - h_mean, full_matrices=False)
    w = vt.T @ (_pinv_factors(s, lam)[:, None] * (u.T @ (r - r_mean)))
    return jnp.concatenate([w, (r_mean - h_mean @ w)[None]], axis=0)


def ridge_fit(
    h: Any,
    y_onehot: Any,
    lam: float,
    *,
    solver: str = "cholesky",
    penalize_bias: bool = False,
    anchor: dict | None = None,
) -> dict:
    """Closed-form ridge head on features ``h [n, d]`` and targets ``y_onehot [n, C]``.

    Solves ``min_{W,b} ‖h W + 1 bᵀ − Y‖² + lam (‖W − W0‖² + [penalize_bias] ‖b − b0‖²)``
    (sums of squares, not means), ``(W0, b0)`` = ``anchor`` (default zeros).

    Solvers (all give the same minimiser when it is unique):

    - ``"cholesky"``: the ``(d+1)×(d+1)`` normal equations ``(ΦᵀΦ + lam D) Δ = Φᵀ R``,
      ``Φ = [h, 1]``, ``R = Y − Φ W̃0``; needs ``lam > 0`` (then the matrix is positive
      definite even with the bias unpenalised). Cheapest for ``n ≫ d``.
    - ``"svd"``: thin SVD (of centred ``h`` when the bias is free); ``lam = 0`` gives the
      minimum-norm least-squares solution.
    - ``"lstsq"``: ``jnp.linalg.lstsq`` on the augmented system
      ``[Φ; sqrt(lam) D^{1/2}] Δ = [R; 0]``.

    Returns ``{"kernel": [d, C], "bias": [C]}`` in the dtype of ``h`` (float64 inside
    ``jax.enable_x64``).
    """
    check_choice("solver", solver, SOLVERS)
    h = jnp.asarray(h)
    if h.ndim != 2:
        raise ValueError(f"h must be [n, d] features, got shape {h.shape}")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.float32)
    y = jnp.asarray(y_onehot, h.dtype)
    if y.ndim != 2:
        raise ValueError(f"y_onehot must be [n, C] targets, got shape {y.shape}")
    check_nonempty("h", h)
    check_same_length(h=h, y_onehot=y)
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if solver == "cholesky" and lam == 0:
        raise ValueError("lam must be > 0 with solver='cholesky' (use 'svd' or 'lstsq' for lam=0)")
    w0 = jnp.zeros((h.shape[1] + 1, y.shape[1]), h.dtype)
    if anchor is not None:
        w0 = jnp.concatenate([jnp.asarray(anchor["kernel"], h.dtype), jnp.asarray(anchor["bias"], h.dtype)[None]])
        if w0.shape != (h.shape[1] + 1, y.shape[1]):
            raise ValueError(f"anchor must have kernel [{h.shape[1]}, {y.shape[1]}] and bias [{y.shape[1]}]")
    r = y - _augment(h) @ w0
    w = w0 + _ridge_delta(h, r, jnp.asarray(lam, h.dtype), solver, bool(penalize_bias))
    return {"kernel": w[:-1], "bias": w[-1]}


def ridge_refit_with_point(
    h: Any,
    y_onehot: Any,
    lam: float,
    h_new: Any,
    y_new: Any,
    **options: Any,
) -> dict:
    """:func:`ridge_fit` on the labeled set plus new point(s) ``h_new [d]|[m, d]``,
    ``y_new [C]|[m, C]`` — the "actually refit the head" side of the look-ahead test.

    Equivalence with the NTK look-ahead (kernel ``k(x, x') = h·h' + 1``, i.e. the
    head-only NTK of a dense head, single logit): with ``penalize_bias=True``,
    ``anchor`` = the current head ``W0`` (so ``f = Φ W0``), ``solver="svd"`` and
    ``lam = 0``, the refit is the minimum-norm change of ``W`` that interpolates the
    labels, whose predictions are exactly ``f_lin`` (on ``L``) and ``f⁺_lin`` (on
    ``L ∪ {x'}``) of :mod:`jaxal.lookahead.core` whenever ``|L| + 1 ≤ d + 1`` and the rows are
    independent. With ``lam > 0`` it is the same update with noise variance ``lam``
    added to the kernel's diagonal.
    """
    h_new = jnp.atleast_2d(jnp.asarray(h_new))
    y_new = jnp.atleast_2d(jnp.asarray(y_new))
    hh = jnp.concatenate([jnp.asarray(h), h_new.astype(jnp.asarray(h).dtype)], axis=0)
    yy = jnp.concatenate([jnp.asarray(y_onehot), y_new.astype(jnp.asarray(y_onehot).dtype)], axis=0)
    return ridge_fit(hh, yy, lam, **options)


# --------------------------------------------------------------------------- model


def linear_logits(head: dict, h: Array) -> Array:
    """``h @ kernel + bias``: ``[n, d] -> [n, C]``."""
    return h @ head["kernel"] + head["bias"]


def linear_model(head: dict, features: Callable[[Array], Array] | None = None) -> Model:
    """A :class:`~jaxal.model.Model` with a dense linear head on frozen features.

    ``features(x) -> h [n, d]`` is the encoder (no trainable params: the body is
    ``{}``); ``None`` means the inputs are already embeddings (identity). The head NTK
    of this model is exactly ``(h·h' + 1) I_C``.
    """
    enc = (lambda x: x) if features is None else features

    def feats(params_body, x):
        del params_body
        return enc(x)

    head = {"kernel": jnp.asarray(head["kernel"]), "bias": jnp.asarray(head["bias"])}
    return from_functions(feats, linear_logits, {"body": {}, "head": head}, dense_head=True)


# --------------------------------------------------------------------------- AdamW head


@dataclass(frozen=True)
class HeadConfig:
    """How to fit the linear head each round.

    Attributes:
      method: ``"ridge"`` (closed form, one-hot targets) or ``"adamw"`` (softmax CE).
      lam: ridge penalty (sum-of-squares objective, see :func:`ridge_fit`).
      solver: ridge solver, one of :data:`SOLVERS`.
      penalize_bias: whether ridge penalises the bias (default no).
      learning_rate, weight_decay: AdamW settings.
      max_steps: AdamW full-batch steps cap.
      patience: stop after this many steps without a better validation loss.
      val_fraction: share of the labeled set held out (seeded) for early stopping;
        with fewer than 2 examples per side there is no split and no early stopping.
    """

    method: str = "ridge"
    lam: float = 1e-2
    solver: str = "cholesky"
    penalize_bias: bool = False
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    max_steps: int = 2000
    patience: int = 100
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_choice("head method", self.method, HEAD_METHODS)
        check_choice("solver", self.solver, SOLVERS)
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_steps < 1 or self.patience < 1:
            raise ValueError("max_steps and patience must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


class HeadInfo(NamedTuple):
    """Diagnostics of :func:`train_linear_head`: steps run, the step of the kept
    (best-validation) head, its validation loss (NaN without a split), its training
    accuracy."""

    steps: int
    best_step: int
    val_loss: float
    train_accuracy: float


@functools.partial(jax.jit, static_argnames=("num_classes", "lr", "wd", "max_steps", "patience", "has_val"))
def _adamw_head(h_tr, y_tr, h_va, y_va, num_classes, lr, wd, max_steps, patience, has_val):
    tx = optax.adamw(lr, weight_decay=wd)
    d = h_tr.shape[1]
    head = {"kernel": jnp.zeros((d, num_classes), h_tr.dtype), "bias": jnp.zeros((num_classes,), h_tr.dtype)}

    def ce(p, h, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(linear_logits(p, h), y))

    def cond(s):
        step, _, _, _, _, best_step = s
        return (step < max_steps) & (step - best_step <= patience)

    def body(s):
        step, p, opt, best_p, best_loss, best_step = s
        g = jax.grad(ce)(p, h_tr, y_tr)
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        step = step + 1
        val = ce(p, h_va, y_va) if has_val else jnp.asarray(-jnp.inf, h_tr.dtype)
        better = (val < best_loss) | (not has_val)
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        return step, p, opt, best_p, jnp.where(better, val, best_loss), jnp.where(better, step, best_step)

    inf = jnp.asarray(jnp.inf, h_tr.dtype)
    zero = jnp.asarray(0, jnp.int32)
    init = (zero, head, tx.init(head), head, inf, zero)
    step, _, _, best_p, best_loss, best_step = jax.lax.while_loop(cond, body, init)
    return best_p, step, best_step, best_loss


def train_linear_head(
    key: Array, h: Any, y: Any, num_classes: int, config: HeadConfig = HeadConfig()
) -> tuple[dict, HeadInfo]:
    """Linear head by full-batch AdamW on softmax CE, early-stopped on validation loss.

    A seeded (``key``) split holds out ``val_fraction`` of ``(h [n, d], y [n])``; the
    head starts at zero (the problem is convex), takes up to ``max_steps`` steps and
    keeps the parameters of the best validation loss, stopping ``patience`` steps after
    it. Returns ``({"kernel": [d, C], "bias": [C]}, HeadInfo)``.
    """
    h = jnp.asarray(h)
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.float32)
    y_np = np.asarray(y)
    check_nonempty("h", h)
    check_same_length(h=h, y=y_np)
    check_labels("y", y_np, num_classes)
    n = h.shape[0]
    n_val = int(np.floor(config.val_fraction * n))
    has_val = n_val >= 2 and n - n_val >= 2
    perm = host_permutation(key, n)
    tr, va = (perm[n_val:], perm[:n_val]) if has_val else (perm, perm[:1])
    y_dev = jnp.asarray(y_np, jnp.int32)
    head, steps, best_step, best_loss = _adamw_head(
        h[tr], y_dev[tr], h[va], y_dev[va], int(num_classes), float(config.learning_rate),
        float(config.weight_decay), int(config.max_steps), int(config.patience), has_val,
    )
    acc = float(jnp.mean(jnp.argmax(linear_logits(head, h), -1) == y_dev))
    info = HeadInfo(int(steps), int(best_step), float(best_loss) if has_val else float("nan"), acc)
    return head, info


def fit_head(
    key: Array, h: Any, y: Any, num_classes: int, config: HeadConfig = HeadConfig()
) -> tuple[Model, dict]:
    """Fit the head on embeddings ``(h [n, d], y [n])`` and wrap it as a Model on
    embeddings (identity features). Returns ``(model, info)``; ``info`` holds
    ``method``, ``train_accuracy`` and the AdamW diagnostics when used."""
    check_finite("h", h)
    y_np = np.asarray(y)
    check_labels("y", y_np, num_classes)
    if config.method == "ridge":
        y1 = jax.nn.one_hot(jnp.asarray(y_np), num_classes, dtype=jnp.asarray(h).dtype)
        head = ridge_fit(h, y1, config.lam, solver=config.solver, penalize_bias=config.penalize_bias)
        acc = float(jnp.mean(jnp.argmax(linear_logits(head, jnp.asarray(h)), -1) == y_np))
        info = {"method": "ridge", "train_accuracy": acc}
    else:
        head, hi = train_linear_head(key, h, y_np, num_classes, config)
        info = {"method": "adamw", **hi._asdict()}
    return linear_model(head), info


# --------------------------------------------------------------------------- PCA


class PCA(NamedTuple):
    """A fitted projection ``h -> (h - mean) @ components``.

    Attributes:
      mean: ``[d]`` training mean.
      components: ``[d, k]`` orthonormal principal directions (largest variance first).
      explained_variance: ``[k]`` variance along each direction.
    """

    mean: Array
    components: Array
    explained_variance: Array

    def transform(self, h: Any) -> Array:
        """``[n, d] -> [n, k]``."""
        return (jnp.asarray(h) - self.mean) @ self.components


def fit_pca(h: Any, k: int) -> PCA:
    """PCA of ``h [n, d]`` to ``k`` dimensions (thin SVD of the centred matrix).

    Fit it once per data set, on the whole training pool's embeddings (no labels are
    used, so this is ordinary transductive preprocessing), then transform every split.
    """
    h = jnp.asarray(h)
    check_nonempty("h", h)
    if h.ndim != 2:
        raise ValueError(f"h must be [n, d], got shape {h.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(h.shape):
        raise ValueError(f"k must be an integer in [1, min(n, d) = {min(h.shape)}], got {k!r}")
    mean = jnp.mean(h, axis=0)
    _, s, vt = jnp.linalg.svd(h - mean, full_matrices=False)
    return PCA(mean, vt[:k].T, (s[:k] ** 2) / max(h.shape[0] - 1, 1))


# --------------------------------------------------------------------------- cache


def fingerprint(name: str, x: Any) -> str:
    """A hex digest of the encoder ``name`` and the bytes, shape and dtype of ``x``."""
    a = np.ascontiguousarray(np.asarray(x))
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(str((a.shape, a.dtype.str)).encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings computed once per (encoder, data set), kept in memory and optionally
    on disk as ``<directory>/<name>-<fingerprint[:16]>.npz`` (key ``"embeddings"``).

    The key is :func:`fingerprint` of the encoder *name* and the data, so the name must
    change whenever the encoder's weights do. ``computed`` counts encoder passes
    (cache misses), which is what a test or a log wants to see.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = None if directory is None else os.fspath(directory)
        self._memory: dict[str, np.ndarray] = {}
        self.computed = 0

    def _path(self, name: str, fp: str) -> str | None:
        if self.directory is None:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return os.path.join(self.directory, f"{safe}-{fp[:16]}.npz")

    def get(
        self,
        name: str,
        encoder: Callable[[Array], Array],
        x: Any,
        *,
        batch_size: int = 1024,
        jit: bool = True,
    ) -> np.ndarray:
        """Embeddings ``encoder(x) -> [n, d]`` (numpy), computed at most once.

        ``encoder`` runs on row chunks of ``batch_size`` (jit-compiled unless
        ``jit=False``, for encoders that are not traceable).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string naming the encoder")
        check_nonempty("x", x)
        fp = fingerprint(name, x)
        if fp in self._memory:
            return self._memory[fp]
        path = self._path(name, fp)
        if path is not None and os.path.exists(path):
            with np.load(path) as f:
                h = f["embeddings"]
        else:
            fn = jax.jit(encoder) if jit else encoder
            h = np.asarray(batched(fn, np.asarray(x), batch_size, pad=jit))
            if h.ndim != 2 or h.shape[0] != np.shape(x)[0]:
                raise ValueError(f"encoder must map [n, ...] to [n, d]; got {h.shape} for n={np.shape(x)[0]}")
            self.computed += 1
            if path is not None:
                os.makedirs(self.directory, exist_ok=True)
                tmp = path + ".tmp.npz"
                np.savez(tmp, embeddings=h)
                os.replace(tmp, path)
        self._memory[fp] = h
        return h

    def __len__(self) -> int:
        return len(self._memory)
