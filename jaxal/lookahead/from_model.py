"""The bridge from a trained :class:`~jaxal.model.Model` to a look-ahead state.

:func:`init_from_model` computes the network outputs and the kernel blocks on
``L ∪ S`` (one kernel call) and hands them to :func:`jaxal.lookahead.core.init`.
The kernel is chosen by ``approximation``: the trained network's empirical NTK, or an
infinite-width ReLU NTK (:mod:`jaxal.lookahead.baselines`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from jaxal.lookahead import core
from jaxal.lookahead.baselines import mlp_depth, mlp_input_dim, mlp_widths, relu_ntk_ntk_param, relu_ntk_standard
from jaxal.model import Model, predict_logits
from jaxal.ntk import kernel as ntk_kernel
from jaxal.ops.buckets import bucket
from jaxal.ops.linalg import check_jitter
from jaxal.validation import check_choice

__all__ = ["APPROXIMATIONS", "CONTRACTIONS", "kernel_blocks", "init_from_model"]


#: The look-ahead kernel. ``empirical``: the trained network's NTK; ``infinite``: the infinite-width limit of the
#: same (standard-parametrised Flax) MLP at initialisation; ``infinite_ntk_param``: the
#: infinite-width limit in the NTK parametrisation (a different kernel; a contrast).
APPROXIMATIONS = ("empirical", "infinite", "infinite_ntk_param")
CONTRACTIONS = ("single_logit", "sum_logits", "trace", "full")


def kernel_blocks(
    model: Model,
    x_labeled: Any,
    x_eval: Any,
    *,
    approximation: str = "empirical",
    contraction: str = "single_logit",
    subset: Any = "all",
    depth: int | None = None,
    memory_bytes: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(K_LL, K_SL, K_SS)`` from one kernel call on ``[x_labeled; x_eval]``.

    ``approximation="empirical"``: :func:`jaxal.ntk.kernel` with ``contraction`` and ``subset``
    (scalar ``[n1, n2]`` or, for ``"full"``, ``[n1, n2, C, C]``).
    ``approximation="infinite"``: :func:`~jaxal.lookahead.baselines.relu_ntk_standard`, the
    infinite-width NTK of the model's own architecture (a ReLU MLP in Flax's standard
    parametrisation, widths read from its Dense kernels; ``depth`` must be ``None`` or
    the model's depth). ``approximation="infinite_ntk_param"``:
    :func:`~jaxal.lookahead.baselines.relu_ntk_ntk_param` with the model's number of
    hidden layers (or ``depth``). Both scalar, used ``⊗ I_C``.
    """
    check_choice("approximation", approximation, APPROXIMATIONS)
    check_choice("contraction", contraction, CONTRACTIONS)
    n_l = int(np.shape(x_labeled)[0])
    # both blocks in x_eval's dtype as JAX would hold it (float64 -> float32 unless x64 is on),
    # joined on the host: a device concatenate would compile a program per shape
    dtype = jax.dtypes.canonicalize_dtype(np.asarray(x_eval).dtype)
    x = np.concatenate([np.asarray(x_labeled, dtype), np.asarray(x_eval, dtype)], axis=0)
    if approximation == "empirical":
        k = ntk_kernel(model, x, contraction=contraction, subset=subset, memory_bytes=memory_bytes)
    elif approximation == "infinite":
        widths = mlp_widths(model)
        if depth is not None and depth != len(widths):
            raise ValueError(f"approximation='infinite' reads the depth from the model ({len(widths)} hidden layers); "
                             f"depth={depth} applies to approximation='infinite_ntk_param'")
        d = int(np.prod(x.shape[1:]))
        if mlp_input_dim(model) != d:
            raise ValueError(f"the model's first Dense layer takes {mlp_input_dim(model)} inputs, x has {d}")
        k = relu_ntk_standard(x, widths=widths)
    else:
        k = relu_ntk_ntk_param(x, depth=depth if depth is not None else mlp_depth(model))
    return _split_blocks(k, n_l)



@functools.partial(jax.jit, static_argnums=1)
def _split_blocks(k: jax.Array, n_l: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(K_LL, K_SL, K_SS)`` of the joint kernel on ``[L; S]``: one program, not three slices."""
    return k[:n_l, :n_l], k[n_l:, :n_l], k[n_l:, n_l:]


def pad_to_bucket(x_l: np.ndarray, y_l: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, valid)``: the labeled set zero-padded to its shape bucket
    (:func:`jaxal.ops.buckets.bucket`), ``valid`` marking the real rows, so rounds whose
    ``|L|`` share a bucket share compiled programs (``core.init(valid_l=...)`` decouples
    the padding exactly)."""
    n_l = x_l.shape[0]
    size = bucket(n_l)
    x_l = np.concatenate([x_l, np.zeros((size - n_l,) + x_l.shape[1:], x_l.dtype)])
    return x_l, np.concatenate([y_l, np.zeros(size - n_l, np.int32)]), np.arange(size) < n_l


def init_from_model(
    model: Model,
    x_labeled: Any,
    y_labeled: Any,
    x_eval: Any,
    *,
    approximation: str = "empirical",
    contraction: str = "single_logit",
    subset: Any = "all",
    depth: int | None = None,
    jitter: float | None = None,
    variance_floor: float | None = None,
    memory_bytes: int | None = None,
    pad_labeled: bool = True,
) -> tuple[core.LookaheadState, core.LookaheadInfo]:
    """Look-ahead state on ``x_eval`` (``[S, ...]``) for a trained model and its labeled set.

    With ``pad_labeled`` (default) the labeled set is padded to a bucket size
    (:func:`jaxal.ops.buckets.bucket`) and the padding decoupled exactly
    (``core.init(valid_l=...)``), so rounds whose ``|L|`` share a bucket share every
    compiled program; the state equals the unpadded one up to float round-off.

    Warns (:class:`jaxal.ops.linalg.JitterWarning`, via
    :func:`jaxal.ops.linalg.check_jitter`) when the Cholesky of ``K_LL`` needed a relative
    jitter above :data:`~jaxal.ops.linalg.WARN_RELATIVE_JITTER` or failed at the cap
    (``info.jitter_ok`` False); ``info`` carries both either way. The run goes on: a
    failed factor is a bad kernel for this round, which a hard error mid-loop would turn
    into a lost run, so the caller decides (``warnings.simplefilter("error",
    JitterWarning)`` makes it fatal).
    """
    x_labeled, y_labeled = np.asarray(x_labeled), np.asarray(y_labeled, np.int32)
    n_l = int(x_labeled.shape[0])
    valid = None
    if pad_labeled and n_l:
        x_labeled, y_labeled, valid = pad_to_bucket(x_labeled, y_labeled)
    blocks = kernel_blocks(
        model, x_labeled, x_eval, approximation=approximation, contraction=contraction, subset=subset, depth=depth,
        memory_bytes=memory_bytes,
    )
    f_eval = predict_logits(model, x_eval)
    f_lab = predict_logits(model, x_labeled) if x_labeled.shape[0] else f_eval[:0]
    dtype = blocks[0].dtype
    state, info = core.init(
        *blocks, f_lab.astype(dtype), f_eval.astype(dtype), jax.device_put(y_labeled),
        jitter=jitter, variance_floor=variance_floor, valid_l=None if valid is None else jax.device_put(valid),
    )
    if n_l:  # concrete values here: the jitted init cannot warn
        check_jitter(info.relative_jitter, info.jitter_ok, what="the labeled kernel K_LL", fixed=jitter is not None)
    return state, info
