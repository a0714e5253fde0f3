"""float32 accuracy of every NTK implementation x contraction against a float64 brute force.

The contraction of per-example Jacobians (``jacobian``, and ``structured`` for the conv
gradients it materialises) used to leave sums of ``Cd·P`` float32 products to the
backend: XLA:CPU runs a block with a single example on one side as a matrix-vector
loop that accumulates sequentially, and splits a reduction fused with the Jacobian's
producer into long windows. With nonnegative inputs (images) the products share a
sign, the sums grow linearly and so does the error: 1.8e-3 (trace, one x1 example),
7e-5 to 1e-4 (single_logit / sum_logits) and 2.4e-6 (trace, diagonal) on the conv net
below, 1e-3 on ResNet-18, against at most 5e-7 now. The tolerances sit between.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxal
from jaxal import ntk
from jaxal.ntk.contract import contract_diag, contract_pair

C = 10


class WideConv(nn.Module):
    """A 3x3 conv 128 -> 256 on 4x4 images: one 295k-weight leaf (2.9M products at C = 10)."""

    def setup(self):
        self.conv = nn.Conv(256, (3, 3))
        self.head = nn.Dense(C)

    def features(self, x, train: bool = False):
        return jnp.mean(nn.relu(self.conv(x)), axis=(1, 2))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


@functools.cache
def _setup():
    """float32 ``(model, x [4, 4, 4, 128])`` and the float64 ``[4, 4, C, C]`` kernel of ``J J^T``."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (4, 4, 4, 128)).astype(np.float32)
    shapes = jax.eval_shape(WideConv().init, jax.random.PRNGKey(0), x[:1])  # LeCun-normal kernels, small biases
    variables = jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) * (np.prod(s.shape[:-1]) ** -0.5 if len(s.shape) > 1 else 0.1))
        .astype(np.float32), shapes)
    with jax.enable_x64(True):
        m64 = jaxal.from_linen(WideConv(), jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables),
                               inference_kwargs={"train": False})
        theta, unravel = ravel_pytree(m64.params)

        @jax.jit
        def gram(theta, x):
            j = jax.jacrev(lambda th: m64.apply(unravel(th), x))(theta)  # [n, C, P]
            return jnp.einsum("icp,jdp->ijcd", j, j)

        full = np.asarray(gram(theta, jnp.asarray(x, jnp.float64)))
    model = jaxal.from_linen(WideConv(), variables, inference_kwargs={"train": False})
    return model, x, full


def _reduce(full: np.ndarray, contraction: str) -> np.ndarray:
    return {
        "full": lambda: full,
        "trace": lambda: np.einsum("...cc->...", full),
        "single_logit": lambda: full[..., 0, 0],
        "sum_logits": lambda: full.sum((-1, -2)) / C,
    }[contraction]()


def _max_err(k, ref) -> float:
    k, ref = np.asarray(k, np.float64), np.asarray(ref, np.float64)
    assert k.shape == ref.shape
    return float(np.abs(k - ref).max() / np.abs(ref).max())


# After the fix every implementation is within 3.1e-7 (scalar contractions) and 5.0e-7
# (full: the float32 Jacobians' own rounding); before it the Jacobian contraction had
# 1.8e-3 (trace), 1e-4 (single_logit / sum_logits) and 2.4e-6 (trace, diagonal).
TOL = {"full": 2e-6, "trace": 1e-6, "single_logit": 1e-6, "sum_logits": 1e-6}


@pytest.mark.parametrize("contraction", ["full", "trace", "single_logit", "sum_logits"])
@pytest.mark.parametrize("implementation", ["jacobian", "structured", "ntvp"])
def test_float32_matches_float64(implementation, contraction):
    model, x, full = _setup()
    # one x1 example against three: a matrix-vector block
    k = ntk.kernel(model, x[:1], x[1:], contraction=contraction, implementation=implementation)
    d = ntk.kernel(model, x, contraction=contraction, diagonal=True, implementation=implementation)
    assert k.dtype == d.dtype == jnp.float32
    errs = {"pair": _max_err(k, _reduce(full[:1, 1:], contraction)),
            "diagonal": _max_err(d, _reduce(np.einsum("iicd->icd", full), contraction))}
    assert max(errs.values()) < TOL[contraction], f"{implementation}/{contraction}: " + ", ".join(
        f"{name} {e:.2e}" for name, e in errs.items())


def _gram64(a, b):
    """``[b1, b2, C, C]`` in float64 (BLAS)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = a.reshape(a.shape[0] * C, -1) @ b.reshape(b.shape[0] * C, -1).T
    return g.reshape(a.shape[0], C, b.shape[0], C).transpose(0, 2, 1, 3)


def test_contractions_of_a_long_nonnegative_leaf():
    """Blocked sums (one example against three, and a diagonal) and a GEMM block (9 x 12
    examples) of a 400k-product leaf whose length, a prime, no block divides (so it is
    zero-padded), plus a 70-product leaf, against float64."""
    rng = np.random.default_rng(1)
    j = [rng.uniform(0.0, 1.0, (12, C, 40_009)).astype(np.float32), rng.uniform(0.0, 1.0, (12, C, 7)).astype(np.float32)]
    pair = jax.jit(functools.partial(contract_pair, mode="trace"))
    for b1, b2, tol in [(3, 1, 2e-7), (9, 12, 1e-6)]:
        j1, j2 = [a[:b1] for a in j], [a[-b2:] for a in j]
        ref = sum(np.einsum("ijcc->ij", _gram64(a, b)) for a, b in zip(j1, j2))
        assert _max_err(pair(j1, j2), ref) < tol, (b1, b2)
    ref = sum(np.einsum("iicc->i", _gram64(a, a)) for a in j)
    assert _max_err(jax.jit(functools.partial(contract_diag, mode="trace"))(j), ref) < 2e-7
