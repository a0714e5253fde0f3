"""The Model protocol and its adapters: the body/head split must reproduce the network."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_for_tests import NnxTinyMLP, linear_head

import jaxal


class TinyBN(nn.Module):
    """A dense net with BatchNorm and dropout, the awkward case for adapters."""

    def setup(self):
        self.l1 = nn.Dense(8)
        self.bn = nn.BatchNorm()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Dense(3)

    def features(self, x, train: bool = False, dropout: bool = False):
        h = nn.relu(self.bn(self.l1(x), use_running_average=not train))
        return self.drop(h, deterministic=not dropout)

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def _bn_variables():
    net = TinyBN()
    x = jax.random.normal(jax.random.key(0), (6, 5))
    v = net.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
    # One training pass makes the running statistics non-trivial.
    _, upd = net.apply(v, x * 3 + 1, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
    return net, {**v, **upd}, x


def test_linen_split_reproduces_forward_with_frozen_batchnorm():
    net, v, x = _bn_variables()
    m = jaxal.from_linen(net, v, inference_kwargs={"train": False})
    np.testing.assert_allclose(m.logits(x), net.apply(v, x, train=False), rtol=1e-6, atol=1e-6)
    assert m.dense_head and not m.stochastic
    assert set(m.params) == {"body", "head"} and "head" not in m.params["body"]


def test_linen_stochastic_pass_uses_key_and_frozen_stats():
    net, v, x = _bn_variables()
    m = jaxal.from_linen(net, v, inference_kwargs={"train": False},
                         stochastic_kwargs={"train": False, "dropout": True})
    assert m.stochastic
    a, b = m.logits(x, jax.random.key(0)), m.logits(x, jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(a, m.logits(x, jax.random.key(0)))
    # Without a key the pass is deterministic inference.
    np.testing.assert_allclose(m.logits(x), net.apply(v, x, train=False), rtol=1e-6, atol=1e-6)


def test_apply_differentiates_through_both_parts():
    net, v, x = _bn_variables()
    m = jaxal.from_linen(net, v, inference_kwargs={"train": False})
    g = jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(m.params)
    full = jax.grad(lambda p: jnp.sum(net.apply({**v, "params": p}, x) ** 2))(v["params"])
    np.testing.assert_allclose(g["head"]["kernel"], full["head"]["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["body"]["l1"]["kernel"], full["l1"]["kernel"], rtol=1e-5, atol=1e-6)


def test_model_is_a_pytree_through_jit():
    net, v, x = _bn_variables()
    m = jaxal.from_linen(net, v, inference_kwargs={"train": False})
    out = jax.jit(lambda mm, xx: mm.logits(xx))(m, x)
    np.testing.assert_allclose(out, m.logits(x), rtol=1e-6, atol=1e-6)
    doubled = jax.tree_util.tree_map(lambda p: 2 * p, m)
    assert doubled.features is m.features


def test_nnx_adapter_matches_module_and_params_flow():
    net = NnxTinyMLP(5, 8, 3, nnx.Rngs(0))
    m = jaxal.from_nnx(net)
    x = jax.random.normal(jax.random.key(4), (4, 5))
    np.testing.assert_allclose(m.logits(x), net(x), rtol=1e-6)
    assert m.dense_head
    # Changing params through the protocol changes the output as the maths says.
    p = jax.tree_util.tree_map(jnp.zeros_like, m.params)
    np.testing.assert_allclose(m.apply(p, x), np.zeros((4, 3)), atol=0)


def test_from_functions_and_bad_adapters():
    feats = lambda p, x: x @ p["w"]  # noqa: E731 - key-less features are adapted
    params = {"body": {"w": jnp.eye(3)}, "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    m = jaxal.from_functions(feats, linear_head, params, dense_head=True)
    np.testing.assert_allclose(m.logits(jnp.eye(3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="body"):
        jaxal.from_functions(feats, linear_head, {"w": 1})
    net, v, _ = _bn_variables()
    with pytest.raises(ValueError, match="head='out'"):
        jaxal.from_linen(net, v, head="out")
    with pytest.raises(ValueError, match="no method"):
        jaxal.from_linen(net, v, features="embed")
