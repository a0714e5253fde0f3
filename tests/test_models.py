"""Models: the body/head split reproduces the full forward pass; linen vs NNX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxal
from jaxal import models
from jaxal.training.train import init_variables


def _random_variables(module, x, seed=0):
    """Variables with the init's shapes filled by numpy normals: the split must hold
    for any weights, and this skips the (slow on CPU) per-shape RNG of a real init."""
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.1, s.shape), jnp.float32), shapes["params"])
    if "batch_stats" not in shapes:
        return {"params": params}
    stats = jax.tree_util.tree_map_with_path(  # the init's values: mean 0, var 1
        lambda path, s: jnp.full(s.shape, 1.0 if path[-1].key == "var" else 0.0), shapes["batch_stats"]
    )
    return {"params": params, "batch_stats": stats}


def _with_batch_stats_moved(module, variables, x):
    """Run one train-mode forward pass so BatchNorm running stats leave their init."""
    _, new_state = module.apply(variables, x * 3.0 + 1.0, train=True, mutable=["batch_stats"])
    return {**variables, **new_state}


@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("mlp", (64,), {"widths": (16, 8)}),
        ("cnn", (40,), {"channels": (4, 8), "hidden": 16}),
        ("cnn", (8, 8, 3), {"channels": (4,), "hidden": 16}),
    ],
)
def test_split_reproduces_forward_small(name, shape, options):
    module = models.create(name, 3, input_shape=shape, **options)
    x = jax.random.normal(jax.random.key(0), (5,) + shape)
    variables = _random_variables(module, x)
    model = models.as_model(module, variables)
    full = module.apply(variables, x)
    np.testing.assert_allclose(model.logits(x), full, rtol=1e-5, atol=1e-5)
    h = model.embed(x)
    assert h.shape == (5, module.hidden if name == "cnn" else options["widths"][-1])
    # the head alone is an affine map of the features
    p = model.params["head"]
    np.testing.assert_allclose(h @ p["kernel"] + p["bias"], full, rtol=1e-5, atol=1e-5)
    assert model.dense_head and not model.stochastic


@pytest.mark.parametrize("name, options", [("resnet18", {}), ("wrn", {"depth": 10, "widen_factor": 1})])
def test_split_with_batchnorm_stats(name, options):
    module = models.create(name, 3, input_shape=(8, 8, 3), **options)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = _with_batch_stats_moved(module, _random_variables(module, x), x)
    stats = jax.tree.leaves(variables["batch_stats"])
    assert any(float(jnp.abs(s).max()) > 0 and not np.allclose(s, 1.0) for s in stats)
    model = models.as_model(module, variables)
    full = module.apply(variables, x, train=False)
    assert np.all(np.isfinite(full))
    np.testing.assert_allclose(model.logits(x), full, rtol=1e-4, atol=1e-4)
    # frozen statistics: train-mode output (batch stats) is a different function
    train_out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_out, full, atol=1e-4)


def test_feature_sizes_by_shape_inference():
    x = jnp.zeros((2, 32, 32, 3))
    for module, d in [(models.ResNet18(10), 512), (models.WideResNet(28, 2, 10), 128)]:
        shapes = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x, method="features")[0], x)
        assert shapes.shape == (2, d)


def test_dropout_model_is_stochastic_with_key():
    module = models.create("mlp", 3, input_shape=(6,), widths=(32,), dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (4, 6))
    variables = _random_variables(module, x)
    model = models.as_model(module, variables)
    assert model.stochastic
    np.testing.assert_allclose(model.logits(x), module.apply(variables, x), rtol=1e-6)
    a, b = model.logits(x, jax.random.key(2)), model.logits(x, jax.random.key(2))
    c = model.logits(x, jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, model.logits(x))


class _NnxMLP(nnx.Module):
    def __init__(self, widths, num_classes, d_in, rngs):
        sizes = [d_in, *widths]
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def features(self, x):
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return h

    def __call__(self, x):
        return self.head(self.features(x))


def test_linen_and_nnx_adapters_agree():
    module = models.create("mlp", 4, input_shape=(5,), widths=(7, 6))
    x = jax.random.normal(jax.random.key(0), (3, 5))
    variables = _random_variables(module, x)
    net = _NnxMLP((7, 6), 4, 5, nnx.Rngs(9))
    p = variables["params"]
    pure = {"layers": {i: p[f"layers_{i}"] for i in range(2)}, "head": p["head"]}
    state = nnx.state(net, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(net, state)
    a = models.as_model(module, variables)
    b = jaxal.from_nnx(net)
    np.testing.assert_allclose(a.logits(x), b.logits(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.embed(x), b.embed(x), rtol=1e-6, atol=1e-6)
    assert a.dense_head and b.dense_head


def test_registry_and_bad_input():
    assert models.names() == ["cnn", "mlp", "resnet18", "wrn"]
    with pytest.raises(ValueError, match="valid: cnn, mlp, resnet18, wrn"):
        models.create("vgg", 10, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        models.create("resnet18", 10, input_shape=(64,))
    with pytest.raises(ValueError, match="num_classes"):
        models.create("mlp", 0, input_shape=(64,))
    assert models.create("mlp", 1, input_shape=(64,)).num_classes == 1  # a regression head
    with pytest.raises(ValueError, match="takes no option width; its options: widths, dropout_rate"):
        models.create("mlp", 10, input_shape=(64,), width=3)
    with pytest.raises(ValueError, match="depth"):
        models.create("wrn", 10, input_shape=(8, 8, 3), depth=27)
    with pytest.raises(ValueError, match="depth"):
        init_variables(jax.random.key(0), models.WideResNet(depth=27), jnp.zeros((1, 8, 8, 3)))
