"""Tiny models shared by the tests: plain, importable helpers.

Several test files used to define their own copy of the same small network (one
Dense layer as features, a Dense head; a Dense-BatchNorm-ReLU net; a one-layer NNX
net). They live here once. Every knob a test's numbers depend on (width, activation,
classes, dropout, the init seed, even the Flax name of the hidden layer, which seeds
its init) is a parameter, so each test still gets exactly the weights it had.

Why a plain module and not ``conftest.py``: the builders are called with different
shapes by each file (usually inside that file's own module-scoped fixture), so they
are functions and classes rather than fixtures, and ``conftest`` is not meant to be
imported (``from conftest import ...`` breaks under some runners and import modes).
``tests/conftest.py`` only makes this module importable under every import mode.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxal


def linear_head(p, h):
    """``h @ W + b``: the dense head as a plain function, for ``jaxal.from_functions``."""
    return h @ p["kernel"] + p["bias"]


class TinyMLP(nn.Module):
    """Features ``dropout(activation(Dense(width)(x)))`` and a ``Dense(num_classes)`` head.

    ``activation=None`` is the identity (a linear body). ``dropout_rate > 0`` adds a
    Dropout layer that is active when ``train=True`` (MC dropout through
    ``from_linen(..., stochastic_kwargs={"train": True})``). ``body_name`` is the
    hidden layer's attribute name; Flax folds it into that layer's init key, so it is
    kept per test to keep the test's weights.
    """

    width: int
    num_classes: int = 3
    activation: Callable | None = jnp.tanh
    dropout_rate: float = 0.0
    body_name: str = "body"

    def setup(self):
        setattr(self, self.body_name, nn.Dense(self.width))
        if self.dropout_rate:
            self.drop = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train: bool = False):
        h = getattr(self, self.body_name)(x)
        if self.activation is not None:
            h = self.activation(h)
        if self.dropout_rate:
            h = self.drop(h, deterministic=not train)
        return h

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def tiny_mlp(width: int, *, d_in: int = 4, num_classes: int = 3, activation: Callable | None = jnp.tanh,
             seed: int = 1, body_name: str = "body") -> jaxal.Model:
    """A deterministic :class:`TinyMLP` Model for inputs ``[n, d_in]``, its params
    initialised with ``jax.random.key(seed)`` (Dense init depends on the input width
    only, not on the example it is traced with)."""
    net = TinyMLP(width, num_classes=num_classes, activation=activation, body_name=body_name)
    return jaxal.from_linen(net, net.init(jax.random.key(seed), jnp.zeros((1, d_in), jnp.float32)))


class TinyBNNet(nn.Module):
    """Dense(width) - BatchNorm(momentum 0.9) - ReLU [- dropout] features, a Dense(3) head.

    The small BatchNorm net for checking that ``batch_stats`` are trained (and
    averaged). Dropout, when ``dropout_rate > 0``, follows ``train`` unless
    ``dropout`` says otherwise (the ``jaxal.models`` convention).
    """

    width: int = 8
    dropout_rate: float = 0.0

    def setup(self):
        self.dense = nn.Dense(self.width)
        self.bn = nn.BatchNorm(use_running_average=None, momentum=0.9)
        if self.dropout_rate:
            self.drop = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(3)

    def features(self, x, train: bool = False, dropout=None):
        h = nn.relu(self.bn(self.dense(x), use_running_average=not train))
        if self.dropout_rate:
            h = self.drop(h, deterministic=not (train if dropout is None else dropout))
        return h

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


class NnxTinyMLP(nnx.Module):
    """NNX twin of a one-layer net: features ``relu(Linear(d_in, width))``, a Linear head.

    NNX draws init keys from ``rngs`` in call order, so the weights depend on the
    seed of ``rngs`` and the sizes only.
    """

    def __init__(self, d_in: int, width: int, num_classes: int, rngs: nnx.Rngs):
        self.body = nnx.Linear(d_in, width, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def features(self, x):
        return nnx.relu(self.body(x))

    def __call__(self, x):
        return self.head(self.features(x))
