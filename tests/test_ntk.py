"""jaxal.ntk.kernel against a brute-force float64 kernel (explicit J J^T of raveled params).

Tiny linen models: an MLP, a CNN (two convs, one strided VALID) and a BatchNorm
ResNet-like block (frozen, perturbed statistics), adapted with ``jaxal.from_linen``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxal
from jaxal import ntk

# ----------------------------------------------------------------------------- models


class TinyMLP(nn.Module):
    def setup(self):
        self.l1 = nn.Dense(7)
        self.l2 = nn.Dense(6)
        self.head = nn.Dense(3)

    def features(self, x, train: bool = False):
        return nn.tanh(self.l2(nn.relu(self.l1(x.reshape(x.shape[0], -1)))))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


class TinyCNN(nn.Module):
    def setup(self):
        self.c1 = nn.Conv(3, (3, 3))
        self.c2 = nn.Conv(4, (3, 3), strides=(2, 2), padding="VALID")
        self.fc = nn.Dense(5)
        self.head = nn.Dense(3)

    def features(self, x, train: bool = False):
        h = nn.relu(self.c2(nn.relu(self.c1(x))))
        return nn.relu(self.fc(h.reshape(h.shape[0], -1)))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


class TinyResNet(nn.Module):
    def setup(self):
        self.stem = nn.Conv(3, (3, 3), use_bias=False)
        self.bn0 = nn.BatchNorm()
        self.c1 = nn.Conv(3, (3, 3), use_bias=False)
        self.bn1 = nn.BatchNorm()
        self.head = nn.Dense(3)

    def features(self, x, train: bool = False):
        ura = not train
        h = nn.relu(self.bn0(self.stem(x), use_running_average=ura))
        r = self.bn1(self.c1(h), use_running_average=ura)
        return jnp.mean(nn.relu(h + r), axis=(1, 2))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


MODULES = {"mlp": TinyMLP, "cnn": TinyCNN, "resnet": TinyResNet}
INPUT_SHAPES = {"mlp": (5,), "cnn": (6, 6, 2), "resnet": (4, 4, 2)}


def make(name: str, dtype=jnp.float32):
    """``(model, x [5, ...])`` with non-trivial frozen BatchNorm statistics."""
    module = MODULES[name]()
    variables, x = _init(name)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
    return jaxal.from_linen(module, variables, inference_kwargs={"train": False}), jnp.asarray(x, dtype)


@functools.lru_cache(maxsize=None)
def _init(name):
    """float32 numpy variables and inputs, identical whether or not x64 is on."""
    with jax.enable_x64(False):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5,) + INPUT_SHAPES[name]).astype(np.float32)
        variables = jax.tree_util.tree_map(np.asarray, jax.jit(MODULES[name]().init)(jax.random.PRNGKey(0), x))
        if "batch_stats" in variables:
            variables["batch_stats"] = jax.tree_util.tree_map(
                lambda a: (np.abs(a + 0.3 * rng.standard_normal(a.shape)) + 0.2).astype(np.float32),
                variables["batch_stats"])
        return variables, x


# ------------------------------------------------------------------ brute-force reference


def _mask(model, subset):
    flat, _ = jax.tree_util.tree_flatten_with_path(model.params)
    names = [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in flat]
    if subset == "all":
        return [True] * len(flat)
    if subset in ("head", "body"):
        return [n[0] == subset for n in names]
    return [bool(subset(n, leaf)) for n, (_, leaf) in zip(names, flat)]


def brute_full(model, x1, x2, subset="all"):
    """``[n1, n2, C, C]`` = explicit ``J1 J2^T`` over the raveled selected params (float64)."""
    with jax.enable_x64(True):
        model = model.replace_params(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), model.params))
        x1, x2 = jnp.asarray(x1, jnp.float64), jnp.asarray(x2, jnp.float64)
        leaves, treedef = jax.tree_util.tree_flatten(model.params)
        mask = _mask(model, subset)
        theta, unravel = ravel_pytree([a for a, m in zip(leaves, mask) if m])

        def logits(th, x):
            it = iter(unravel(th))
            full = [next(it) if m else a for a, m in zip(leaves, mask)]
            return model.apply(jax.tree_util.tree_unflatten(treedef, full), x)

        @jax.jit
        def explicit(theta, x1, x2):
            j1 = jax.jacfwd(logits)(theta, x1)  # [n1, C, P]
            j2 = jax.jacfwd(logits)(theta, x2)
            return jnp.einsum("icp,jdp->ijcd", j1, j2)

        return np.asarray(explicit(theta, x1, x2))


def reduce(full, contraction):
    c = full.shape[-1]
    return {
        "full": lambda: full,
        "trace": lambda: np.einsum("ijcc->ij", full),
        "single_logit": lambda: full[:, :, 0, 0],
        "sum_logits": lambda: full.sum((-1, -2)) / c,
    }[contraction]()


@functools.lru_cache(maxsize=None)
def reference(name, subset="all"):
    with jax.enable_x64(True):  # float64 frozen statistics too (BatchNorm's var + eps)
        model, x = make(name, jnp.float64)
        return brute_full(model, x[:3], x[3:], subset)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def kernel64(name, contraction, implementation, subset="all", **kw):
    """The engine's kernel on float64 params and inputs, ``x1 = x[:3]``, ``x2 = x[3:]``."""
    with jax.enable_x64(True):
        model, x = make(name, jnp.float64)
        return np.asarray(ntk.kernel(model, x[:3], x[3:], contraction=contraction,
                                     implementation=implementation, subset=subset, **kw))


IMPLS = ["jacobian", "ntvp", "structured"]
SCALARS = ["trace", "single_logit", "sum_logits"]
# Every implementation x contraction on the MLP; on the CNN and the ResNet every
# implementation on "full" (the other contractions only change the differentiated
# output map, which the MLP pins) plus a few scalar contractions (compile time keeps
# the full 3 x 3 x 4 grid out of CI).
CASES = (
    [("mlp", i, c) for i in IMPLS for c in ["full"] + SCALARS]
    + [(m, i, "full") for m in ("cnn", "resnet") for i in IMPLS]
    + [("cnn", "structured", "trace"), ("resnet", "structured", "single_logit"), ("resnet", "ntvp", "sum_logits")]
)


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,implementation,contraction", CASES)
def test_matches_brute_force_float64(name, implementation, contraction):
    k = kernel64(name, contraction, implementation)
    ref = reduce(reference(name), contraction)
    assert k.shape == ref.shape and k.dtype == np.float64
    assert rel_err(k, ref) < 1e-10


@functools.lru_cache(maxsize=None)
def diag_reference(name):
    with jax.enable_x64(True):
        model, x = make(name, jnp.float64)
        return np.einsum("iicd->icd", brute_full(model, x, x))


@pytest.mark.parametrize("implementation", IMPLS)
def test_diagonal_matches_brute_force(implementation):
    diag_full = diag_reference("cnn")
    with jax.enable_x64(True):
        model, x = make("cnn", jnp.float64)
        kd = ntk.kernel(model, x, contraction="diagonal", implementation=implementation)
        assert kd.shape == (5, 3, 3) and rel_err(kd, diag_full) < 1e-10
        ks = ntk.kernel(model, x, contraction="single_logit", diagonal=True, implementation=implementation)
        assert ks.shape == (5,) and rel_err(ks, diag_full[:, 0, 0]) < 1e-10


def test_float32_within_1e4_of_float64_reference():
    model, x = make("cnn")  # float32 params and inputs
    for impl in IMPLS:
        k = ntk.kernel(model, x[:3], x[3:], contraction="full", implementation=impl)
        assert k.dtype == jnp.float32
        assert rel_err(k, reference("cnn")) < 1e-4


def test_symmetric_psd_on_a_set():
    with jax.enable_x64(True):
        model, x = make("cnn", jnp.float64)
        k = np.asarray(ntk.kernel(model, x, contraction="trace"))
        assert k.shape == (5, 5)
        np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=0)
        eig = np.linalg.eigvalsh(k)
        assert eig.min() > -1e-10 * eig.max()
        full = np.asarray(ntk.kernel(model, x, contraction="full")).transpose(0, 2, 1, 3).reshape(15, 15)
        eig = np.linalg.eigvalsh((full + full.T) / 2)
        assert eig.min() > -1e-10 * eig.max()


@pytest.mark.parametrize("implementation", ["structured", "ntvp"])
def test_chunked_equals_unchunked(implementation):
    model, x = make("mlp")
    x1 = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    whole = ntk.kernel(model, x1, x, contraction="full", implementation=implementation)
    # a bound that fits about 2 examples per chunk on each side (last chunks padded)
    from jaxal.ntk.kernel import _build
    from jaxal.ntk.params import split_params

    split = split_params(model.params, "all")
    _, engine, _ = _build(model, split, "full", implementation, jax.ShapeDtypeStruct((5,), jnp.float32), 10**9, None)
    mem = engine.fixed_bytes + 2 * (2 * engine.feature_bytes) + 4 * engine.pair_bytes
    from jaxal.ntk.chunking import plan_chunks

    plan = plan_chunks(engine, 7, 5, mem)
    assert plan.b1 < 7 and plan.b2 < 5  # really chunked on both axes
    chunked = ntk.kernel(model, x1, x, contraction="full", implementation=implementation, memory_bytes=mem)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    d_whole = ntk.kernel(model, x1, contraction="trace", diagonal=True, implementation=implementation)
    d_chunk = ntk.kernel(model, x1, contraction="trace", diagonal=True, implementation=implementation, memory_bytes=mem)
    np.testing.assert_allclose(d_chunk, d_whole, rtol=1e-5, atol=1e-6)


def test_head_closed_form_and_head_features():
    model, x = make("mlp")
    assert model.dense_head
    assert ntk.chosen_implementation(model, x, subset="head") == "structured"
    ref = brute_full(model, x[:3], x[3:], "head")
    for c in ["full"] + SCALARS:
        k = ntk.kernel(model, x[:3], x[3:], contraction=c, params="head")  # params=str is the subset
        assert rel_err(k, reduce(ref, c)) < 1e-5
    phi = ntk.head_features(model, x)
    assert phi.shape == (5, 7)
    np.testing.assert_allclose(3 * phi @ phi.T, ntk.kernel(model, x, subset="head"), rtol=1e-5)


def test_subset_body_and_callable():
    ref = reference("cnn", "body")
    assert rel_err(kernel64("cnn", "full", "structured", subset="body"), ref) < 1e-10

    def only_bn_and_c1(path, leaf):  # BatchNorm scales/biases (generic path) + one conv (site)
        return path[1].startswith("bn") or path[1] == "c1"

    with jax.enable_x64(True):
        model, x = make("resnet", jnp.float64)
        ref = brute_full(model, x[:3], x[3:], only_bn_and_c1)
    assert rel_err(kernel64("resnet", "trace", "structured", subset=only_bn_and_c1), reduce(ref, "trace")) < 1e-10


def test_structured_finds_dense_and_conv_sites():
    from jaxal.ntk import taps
    from jaxal.ntk.structured import trace_model

    model, x = make("cnn")
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    closed = trace_model(model, treedef, leaves, x[0])
    sites, _ = taps.find_sites(closed, len(leaves), (True,) * len(leaves))
    prims = sorted(s.prim for s in sites)
    assert prims == ["conv_general_dilated"] * 2 + ["dot_general"] * 2  # c1, c2, fc, head kernels


def test_bad_inputs():
    model, x = make("mlp")
    with pytest.raises(ValueError, match="mismatched example shapes"):
        ntk.kernel(model, x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="x1 is empty"):
        ntk.kernel(model, x[:0])
    with pytest.raises(ValueError, match="x2 is empty"):
        ntk.kernel(model, x, x[:0])
    with pytest.raises(ValueError, match="selects no parameter"):
        ntk.kernel(model, x, subset=lambda path, leaf: False)
    with pytest.raises(ValueError, match="unknown subset"):
        ntk.kernel(model, x, subset="last")
    with pytest.raises(ValueError, match="too small for one example"):
        ntk.kernel(model, x, memory_bytes=100)
    with pytest.raises(ValueError, match="memory_bytes must be a positive"):
        ntk.kernel(model, x, memory_bytes=0)
    with pytest.raises(ValueError, match="unknown contraction"):
        ntk.kernel(model, x, contraction="mean")
    with pytest.raises(ValueError, match="unknown implementation"):
        ntk.kernel(model, x, implementation="fast")
    with pytest.raises(ValueError, match="takes no x2"):
        ntk.kernel(model, x, x, contraction="diagonal")


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    import jaxal
    from jaxal import ntk

    def features(p, x):
        return jnp.tanh(x @ p["w"] + p["b"])

    def head(p, h):
        return h @ p["kernel"] + p["bias"]

    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"body": {"w": jax.random.normal(k[0], (4, 6)), "b": jnp.zeros(6)},
              "head": {"kernel": jax.random.normal(k[1], (6, 3)), "bias": jnp.ones(3)}}
    model = jaxal.from_functions(features, head, params, dense_head=True)
    x1, x2 = jax.random.normal(k[2], (6, 4)), jax.random.normal(k[3], (5, 4))
    assert len(jax.devices()) == 4
    one = Mesh(np.array(jax.devices()[:1]), ("pool",))
    worst = 0.0
    for impl, c in (("structured", "full"), ("structured", "trace"), ("jacobian", "trace"), ("ntvp", "full")):
        sharded = ntk.kernel(model, x1, x2, contraction=c, implementation=impl)  # default: all 4 devices
        single = ntk.kernel(model, x1, x2, contraction=c, implementation=impl, mesh=one)
        worst = max(worst, float(np.abs(np.asarray(sharded) - np.asarray(single)).max()))
    # sharded and chunked (x1 chunks of 4 = one row per device, the last padded) vs single device
    chunked = ntk.kernel(model, x1, x2, contraction="trace", implementation="structured", memory_bytes=2_000)
    worst = max(worst, float(np.abs(np.asarray(chunked) - np.asarray(single_trace := ntk.kernel(
        model, x1, x2, contraction="trace", implementation="structured", mesh=one))).max()))
    d4 = ntk.kernel(model, x1, contraction="trace", diagonal=True)
    d1 = ntk.kernel(model, x1, contraction="trace", diagonal=True, mesh=one)
    worst = max(worst, float(np.abs(np.asarray(d4) - np.asarray(d1)).max()))
    print("DEVICES", len(sharded.sharding.device_set))
    print("WORST", worst)
    """
)


def test_sharded_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split() for line in out.stdout.strip().splitlines())
    assert int(lines["DEVICES"]) == 4
    assert float(lines["WORST"]) < 1e-5
