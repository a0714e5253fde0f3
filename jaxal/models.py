"""Flax linen networks with a body/head split, and a name registry.

Every network here has:

- ``features(x, train=False, dropout=None) -> h [n, d]``: the penultimate
  representation (the "body"). ``train`` switches BatchNorm to batch statistics;
  ``dropout`` (default: ``train``) switches dropout on and then needs the
  ``"dropout"`` rng.
- ``head``: an ``nn.Dense(num_classes)`` submodule defined in ``setup``, so it can be
  called on its own (``jaxal.from_linen`` needs this).
- ``__call__(x, train=False) = head(features(x, train))`` -> logits ``[n, C]``.

:func:`as_model` turns a module and its variables into a :class:`jaxal.Model`
(BatchNorm statistics frozen, MC dropout through an explicit key when the module has
dropout).
"""

from __future__ import annotations

import inspect

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxal.model import Model, from_linen
from jaxal.validation import check_choice

__all__ = ["MLP", "CNN", "ResNet18", "WideResNet", "names", "create", "as_model"]

# PyTorch-like running-average momentum: short trainings on small labeled sets need
# statistics that catch up within a few epochs.
_BN_MOMENTUM = 0.9


def _dropout_on(train: bool, dropout: bool | None) -> bool:
    return train if dropout is None else bool(dropout)


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Attributes:
      widths: hidden layer widths; the last one is the feature size ``d`` (with no
        hidden layer the features are the flattened input).
      num_classes: number of logits ``C``.
      dropout_rate: dropout after every hidden layer (0 disables it).
    """

    widths: Sequence[int]
    num_classes: int
    dropout_rate: float = 0.0

    def setup(self) -> None:
        self.layers = [nn.Dense(w) for w in self.widths]
        self.drop = nn.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train: bool = False, dropout: bool | None = None):
        """``x [n, ...] -> h [n, widths[-1]]``."""
        h = jnp.reshape(x, (x.shape[0], -1))
        for layer in self.layers:
            h = nn.relu(layer(h))
            if self.drop is not None:
                h = self.drop(h, deterministic=not _dropout_on(train, dropout))
        return h

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


class CNN(nn.Module):
    """Small conv net: [conv3 - ReLU - maxpool2] per entry of ``channels``, then a
    hidden Dense layer (the features).

    Inputs ``[n, L]`` (e.g. MNIST-1D, 40 samples; flattened digits, 64) are read as
    1-channel signals and ``[n, L, C]`` as C-channel signals (1-D convolutions);
    ``[n, H, W, C]`` are images (2-D convolutions), so give grey images a channel axis. Pooling is skipped once a spatial side is 1, so 8x8 inputs work.

    Attributes:
      num_classes: number of logits ``C``.
      channels: conv widths, one conv block each.
      hidden: feature size ``d``.
      dropout_rate: dropout before and after the hidden layer (0 disables it).
    """

    num_classes: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 128
    dropout_rate: float = 0.0

    def setup(self) -> None:
        # kernel rank is set at call time by the input rank; store the widths only.
        self.convs_1d = [nn.Conv(c, (3,), padding="SAME") for c in self.channels]
        self.convs_2d = [nn.Conv(c, (3, 3), padding="SAME") for c in self.channels]
        self.dense = nn.Dense(self.hidden)
        self.drop = nn.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train: bool = False, dropout: bool | None = None):
        """``x [n, L] | [n, L, C] | [n, H, W, C] -> h [n, hidden]``."""
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim == 3:
            convs, spatial = self.convs_1d, 1
        elif x.ndim == 4:
            convs, spatial = self.convs_2d, 2
        else:
            raise ValueError(f"CNN expects x of rank 2, 3 or 4 (batch first), got shape {x.shape}")
        h = x
        for conv in convs:
            h = nn.relu(conv(h))
            if min(h.shape[1 : 1 + spatial]) >= 2:
                h = nn.max_pool(h, (2,) * spatial, strides=(2,) * spatial)
        h = jnp.reshape(h, (h.shape[0], -1))
        deterministic = not _dropout_on(train, dropout)
        if self.drop is not None:
            h = self.drop(h, deterministic=deterministic)
        h = nn.relu(self.dense(h))
        if self.drop is not None:
            h = self.drop(h, deterministic=deterministic)
        return h

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def _as_image(x):
    if x.ndim == 3:  # [n, H, W] grey images
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected images [n, H, W, C], got shape {x.shape}")
    return x


def _batch_norm() -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=None, momentum=_BN_MOMENTUM)


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3-BN-ReLU-conv3-BN plus (projected) shortcut, ReLU."""

    channels: int
    stride: int = 1

    def setup(self) -> None:
        s = (self.stride, self.stride)
        self.conv1 = nn.Conv(self.channels, (3, 3), strides=s, padding="SAME", use_bias=False)
        self.bn1 = _batch_norm()
        self.conv2 = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)
        self.bn2 = _batch_norm()
        self.proj = nn.Conv(self.channels, (1, 1), strides=s, use_bias=False)
        self.proj_bn = _batch_norm()

    def __call__(self, x, train: bool = False):
        ura = not train
        h = nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        h = self.bn2(self.conv2(h), use_running_average=ura)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = self.proj_bn(self.proj(x), use_running_average=ura)
        return nn.relu(h + x)


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stem, no max-pool, stages 64-128-256-512 of two
    basic blocks each, global average pooling -> features ``[n, 512]``.

    Attributes:
      num_classes: number of logits ``C``.
    """

    num_classes: int

    def setup(self) -> None:
        self.stem = nn.Conv(64, (3, 3), padding="SAME", use_bias=False)
        self.stem_bn = _batch_norm()
        blocks = []
        for i, width in enumerate((64, 128, 256, 512)):
            blocks.append(_BasicBlock(width, stride=1 if i == 0 else 2))
            blocks.append(_BasicBlock(width, stride=1))
        self.blocks = blocks
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train: bool = False, dropout: bool | None = None):
        """``x [n, H, W, C] -> h [n, 512]`` (``dropout`` is accepted and unused)."""
        h = nn.relu(self.stem_bn(self.stem(_as_image(x)), use_running_average=not train))
        for block in self.blocks:
            h = block(h, train)
        return jnp.mean(h, axis=(1, 2))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


class _WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3-(dropout)-BN-ReLU-conv3 + shortcut."""

    channels: int
    stride: int = 1
    dropout_rate: float = 0.0

    def setup(self) -> None:
        s = (self.stride, self.stride)
        self.bn1 = _batch_norm()
        self.conv1 = nn.Conv(self.channels, (3, 3), strides=s, padding="SAME", use_bias=False)
        self.bn2 = _batch_norm()
        self.conv2 = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)
        self.drop = nn.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        self.proj = nn.Conv(self.channels, (1, 1), strides=s, use_bias=False)

    def __call__(self, x, train: bool = False, dropout: bool = False):
        ura = not train
        a = nn.relu(self.bn1(x, use_running_average=ura))
        h = self.conv1(a)
        if self.drop is not None:
            h = self.drop(h, deterministic=not dropout)
        h = self.conv2(nn.relu(self.bn2(h, use_running_average=ura)))
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = self.proj(a)
        return h + x


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis): 3 groups of (depth-4)/6
    pre-activation blocks of widths 16k, 32k, 64k, final BN-ReLU, global average
    pooling -> features ``[n, 64k]`` (WRN-28-2: 128).

    Attributes:
      depth: 6N + 4 (28 by default).
      widen_factor: k.
      num_classes: number of logits ``C``.
      dropout_rate: dropout between the two convs of each block.
    """

    depth: int = 28
    widen_factor: int = 2
    num_classes: int = 10
    dropout_rate: float = 0.0

    def setup(self) -> None:
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ValueError(f"depth must be 6N + 4 with N >= 1, got {self.depth}")
        n = (self.depth - 4) // 6
        k = self.widen_factor
        self.stem = nn.Conv(16, (3, 3), padding="SAME", use_bias=False)
        blocks = []
        for g, width in enumerate((16 * k, 32 * k, 64 * k)):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                blocks.append(_WideBlock(width, stride=stride, dropout_rate=self.dropout_rate))
        self.blocks = blocks
        self.final_bn = _batch_norm()
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train: bool = False, dropout: bool | None = None):
        """``x [n, H, W, C] -> h [n, 64 * widen_factor]``."""
        drop = _dropout_on(train, dropout)
        h = self.stem(_as_image(x))
        for block in self.blocks:
            h = block(h, train, drop)
        h = nn.relu(self.final_bn(h, use_running_average=not train))
        return jnp.mean(h, axis=(1, 2))

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def _make_mlp(num_classes: int, input_shape: tuple, widths: Sequence[int] = (256, 256), dropout_rate: float = 0.0):
    return MLP(widths=tuple(int(w) for w in widths), num_classes=num_classes, dropout_rate=dropout_rate)


def _make_cnn(num_classes: int, input_shape: tuple, channels: Sequence[int] = (32, 64), hidden: int = 128,
              dropout_rate: float = 0.0):
    if not 1 <= len(input_shape) <= 3:
        raise ValueError(f"input_shape for 'cnn' must be (L,), (L, C) or (H, W, C), got {input_shape}")
    return CNN(num_classes=num_classes, channels=tuple(int(c) for c in channels), hidden=int(hidden),
               dropout_rate=dropout_rate)


def _require_image(name: str, input_shape: tuple) -> None:
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape for {name!r} must be images (H, W) or (H, W, C), got {input_shape}")


def _make_resnet18(num_classes: int, input_shape: tuple):
    _require_image("resnet18", input_shape)
    return ResNet18(num_classes=num_classes)


def _make_wrn(num_classes: int, input_shape: tuple, depth: int = 28, widen_factor: int = 2,
              dropout_rate: float = 0.0):
    _require_image("wrn", input_shape)
    if (int(depth) - 4) % 6 != 0 or int(depth) < 10:
        raise ValueError(f"depth must be 6N + 4 with N >= 1 (e.g. 16, 28, 40), got {depth}")
    return WideResNet(depth=int(depth), widen_factor=int(widen_factor), num_classes=num_classes,
                      dropout_rate=dropout_rate)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": _make_mlp,
    "cnn": _make_cnn,
    "resnet18": _make_resnet18,
    "wrn": _make_wrn,
}


def names() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def option_names(name: str) -> tuple[str, ...]:
    """The options model ``name`` takes (``jaxal run --model-option KEY=VALUE``)."""
    check_choice("model", name, _REGISTRY)
    return tuple(inspect.signature(_REGISTRY[name]).parameters)[2:]


def create(name: str, num_classes: int, *, input_shape: Sequence[int], **options: Any) -> nn.Module:
    """Build a registered network.

    Args:
      name: one of :func:`names` (``"mlp"``, ``"cnn"``, ``"resnet18"``, ``"wrn"``).
      num_classes: number of logits ``C`` (>= 2), or of real outputs ``D >= 1`` for a
        regression head (trained with the squared loss ``"mse"``).
      input_shape: shape of one example without the batch axis, e.g. ``(64,)``,
        ``(40,)`` or ``(32, 32, 3)``; checked against what the network accepts.
      **options: the network's own attributes (``widths``, ``dropout_rate``,
        ``channels``, ``hidden``, ``depth``, ``widen_factor``).
    """
    check_choice("model", name, _REGISTRY)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int,)) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 (>= 2 classes, or D >= 1 regression outputs), "
                         f"got {num_classes!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be a non-empty shape of positive sizes, got {input_shape!r}")
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise ValueError(f"model {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(option_names(name)) or 'none'}")
    return _REGISTRY[name](num_classes, shape, **options)


def has_dropout(module: nn.Module) -> bool:
    """True when the module was built with a positive ``dropout_rate``."""
    return float(getattr(module, "dropout_rate", 0.0) or 0.0) > 0.0


def as_model(module: nn.Module, variables: Mapping[str, Any]) -> Model:
    """Adapt one of these networks and its variables to a :class:`jaxal.Model`.

    BatchNorm statistics are frozen (inference mode); networks with dropout get
    MC-dropout passes through ``model.logits(x, key)``.
    """
    return from_linen(
        module,
        variables,
        head="head",
        features="features",
        inference_kwargs={"train": False},
        stochastic_kwargs={"train": False, "dropout": True} if has_dropout(module) else None,
    )
