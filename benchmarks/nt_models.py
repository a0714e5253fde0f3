"""Networks written once, in plain ``jax.numpy`` / ``lax``, for jaxal and neural-tangents alike.

``benchmarks/vs_neural_tangents.py`` runs jaxal (current JAX) and neural-tangents (its
own virtual environment, jax 0.5.3) on exactly the same functions: both sides import
this module, build the network from a JSON-able *spec*, and read the parameters and
inputs from one ``.npz`` file. Nothing here imports jaxal, flax or neural-tangents,
and only APIs that exist in jax 0.5.3 and in current JAX are used.

A network is ``logits = head(params["head"], features(params["body"], x))`` with
``x: [n, ...]``; ``features`` returns ``[n, d]`` and ``head`` is a Dense layer. BatchNorm
runs in inference mode: the running statistics are fixed constants (``stats``), so it
is an affine map per channel whose scale and bias are parameters.

Specs:
  - ``{"kind": "mlp", "widths": [d_in, h1, ..., C]}``: Dense + ReLU, flattened input.
  - ``{"kind": "cnn", "in_shape": [H, W, c], "channels": [c1, c2], "classes": C}``:
    3x3 conv + ReLU, 3x3 stride-2 conv + ReLU, global mean pool, Dense head.
  - ``{"kind": "resnet", "in_shape": [H, W, c], "width": w, "blocks": [2, 2, 2, 2],
    "classes": C}``: ResNet-18-style (``blocks=[2, 2, 2, 2]``): 3x3 stem conv, BN, ReLU,
    stages of basic blocks of widths ``w, 2w, 4w, ...`` (stride 2 from the second
    stage on, 1x1 conv + BN shortcut where the shape changes), mean pool, Dense head.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from jax import lax

Params = Any
Fn = Callable[[Params, Any], Any]

BN_EPS = 1e-5
_DIMS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------- layers


def dense(p: Params, x):
    """``x @ kernel + bias`` (a Dense layer: one ``dot_general`` on a parameter leaf)."""
    return x @ p["kernel"] + p["bias"]


def conv(w, x, stride: int = 1):
    """3x3 (or 1x1) convolution, SAME padding, NHWC / HWIO, no bias."""
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=_DIMS)


def conv_bias(p: Params, x, stride: int = 1):
    """Convolution plus a per-channel bias."""
    return conv(p["kernel"], x, stride) + p["bias"]


def batch_norm(p: Params, s: Params, x):
    """Inference-mode BatchNorm: ``(x - mean) / sqrt(var + eps) * scale + bias``.

    ``s`` (``mean``, ``var``) are fixed statistics, ``p`` (``scale``, ``bias``) parameters.
    """
    inv = lax.rsqrt(s["var"] + BN_EPS)
    return (x - s["mean"]) * (inv * p["scale"]) + p["bias"]


# --------------------------------------------------------------------------- networks


def _mlp_features(spec: dict) -> Callable[[Params, Any, Params], Any]:
    depth = len(spec["widths"]) - 2

    def features(p: Params, x, stats: Params):
        h = x.reshape(x.shape[0], -1)
        for i in range(depth):
            h = jnp.maximum(dense(p[f"dense_{i}"], h), 0.0)
        return h

    return features


def _cnn_features(spec: dict) -> Callable[[Params, Any, Params], Any]:
    def features(p: Params, x, stats: Params):
        h = jnp.maximum(conv_bias(p["conv_0"], x), 0.0)
        h = jnp.maximum(conv_bias(p["conv_1"], h, 2), 0.0)
        return jnp.mean(h, axis=(1, 2))

    return features


def _block_names(spec: dict) -> list[tuple[str, int, bool]]:
    """``(name, stride, projection shortcut?)`` of every basic block of a ResNet spec."""
    out, c_in = [], spec["width"]
    for stage, n in enumerate(spec["blocks"]):
        c_out = spec["width"] * 2**stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            out.append((f"stage{stage}_block{b}", stride, stride != 1 or c_in != c_out))
            c_in = c_out
    return out


def _basic_block(p: Params, s: Params, x, stride: int, project: bool):
    y = jnp.maximum(batch_norm(p["bn_0"], s["bn_0"], conv(p["conv_0"], x, stride)), 0.0)
    y = batch_norm(p["bn_1"], s["bn_1"], conv(p["conv_1"], y))
    short = batch_norm(p["bn_short"], s["bn_short"], conv(p["conv_short"], x, stride)) if project else x
    return jnp.maximum(y + short, 0.0)


def _resnet_features(spec: dict) -> Callable[[Params, Any, Params], Any]:
    blocks = _block_names(spec)

    def features(p: Params, x, stats: Params):
        h = jnp.maximum(batch_norm(p["bn_stem"], stats["bn_stem"], conv(p["conv_stem"], x)), 0.0)
        for name, stride, project in blocks:
            h = _basic_block(p[name], stats[name], h, stride, project)
        return jnp.mean(h, axis=(1, 2))

    return features


_FEATURES = {"mlp": _mlp_features, "cnn": _cnn_features, "resnet": _resnet_features}


def functions(spec: dict, stats: Params) -> tuple[Fn, Fn]:
    """``(features(params_body, x), head(params_head, h))`` of a spec; ``stats`` is closed over."""
    feats = _FEATURES[spec["kind"]](spec)
    return (lambda p, x: feats(p, x, stats)), dense


def apply_fn(spec: dict, stats: Params) -> Fn:
    """``f(params, x) -> logits [n, C]`` with ``params = {"body": ..., "head": ...}``."""
    features, head = functions(spec, stats)
    return lambda params, x: head(params["head"], features(params["body"], x))


# --------------------------------------------------------------------------- parameters


def _he(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    fan_in = int(np.prod(shape[:-1]))
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def _dense_init(rng, d_in: int, d_out: int) -> dict:
    return {"kernel": _he(rng, (d_in, d_out)) * 0.5 ** 0.5, "bias": 0.1 * rng.standard_normal(d_out)}


def _bn_init(rng, c: int) -> tuple[dict, dict]:
    p = {"scale": 1.0 + 0.1 * rng.standard_normal(c), "bias": 0.1 * rng.standard_normal(c)}
    s = {"mean": 0.1 * rng.standard_normal(c), "var": rng.uniform(0.5, 1.5, c)}
    return p, s


def _resnet_init(spec: dict, rng) -> tuple[dict, dict]:
    c_in, w = spec["in_shape"][-1], spec["width"]
    body, stats = {"conv_stem": _he(rng, (3, 3, c_in, w))}, {}
    body["bn_stem"], stats["bn_stem"] = _bn_init(rng, w)
    c = w
    for stage, n in enumerate(spec["blocks"]):
        c_out = w * 2**stage
        for b in range(n):
            name, _, project = _block_names(spec)[sum(spec["blocks"][:stage]) + b]
            p, s = {"conv_0": _he(rng, (3, 3, c, c_out)), "conv_1": _he(rng, (3, 3, c_out, c_out))}, {}
            p["bn_0"], s["bn_0"] = _bn_init(rng, c_out)
            p["bn_1"], s["bn_1"] = _bn_init(rng, c_out)
            if project:
                p["conv_short"] = _he(rng, (1, 1, c, c_out))
                p["bn_short"], s["bn_short"] = _bn_init(rng, c_out)
            body[name], stats[name] = p, s
            c = c_out
    return body, stats


def init(spec: dict, seed: int) -> tuple[dict, dict]:
    """``(params, stats)`` in float64 from a seed (numpy only: identical everywhere)."""
    rng = np.random.default_rng(seed)
    kind = spec["kind"]
    if kind == "mlp":
        w = spec["widths"]
        body = {f"dense_{i}": _dense_init(rng, w[i], w[i + 1]) for i in range(len(w) - 2)}
        return {"body": body, "head": _dense_init(rng, w[-2], w[-1])}, {}
    if kind == "cnn":
        (c1, c2), c_in = spec["channels"], spec["in_shape"][-1]
        body = {"conv_0": {"kernel": _he(rng, (3, 3, c_in, c1)), "bias": 0.1 * rng.standard_normal(c1)},
                "conv_1": {"kernel": _he(rng, (3, 3, c1, c2)), "bias": 0.1 * rng.standard_normal(c2)}}
        return {"body": body, "head": _dense_init(rng, c2, spec["classes"])}, {}
    if kind == "resnet":
        body, stats = _resnet_init(spec, rng)
        return {"body": body, "head": _dense_init(rng, spec["width"] * 2 ** (len(spec["blocks"]) - 1),
                                                  spec["classes"])}, stats
    raise ValueError(f"unknown model kind {kind!r}")


def inputs(spec: dict, n: int, seed: int) -> np.ndarray:
    """``[n, ...]`` float64 inputs from a seed (standard normal)."""
    shape = (spec["widths"][0],) if spec["kind"] == "mlp" else tuple(spec["in_shape"])
    return np.random.default_rng(seed).standard_normal((n,) + shape)


# --------------------------------------------------------------------------- .npz exchange


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> ``{"a/b/c": array}``."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray], prefix: str) -> dict:
    """Inverse of :func:`flatten` for the keys under ``prefix/`` (``{}`` when none)."""
    tree: dict = {}
    for key, v in flat.items():
        if not key.startswith(prefix + "/"):
            continue
        parts = key[len(prefix) + 1:].split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = v
    return tree


def cast(tree: Any, dtype) -> Any:
    """Every array of a nested dict as ``dtype`` (numpy)."""
    if isinstance(tree, dict):
        return {k: cast(v, dtype) for k, v in tree.items()}
    return np.asarray(tree, dtype)
