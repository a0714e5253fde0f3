"""Crash-safe checkpoints of an active-learning run.

One file, ``checkpoint.msgpack``, rewritten atomically after every round (temporary
file in the same directory, ``fsync``, ``os.replace``), so a kill at any instant
leaves either the previous or the new checkpoint, never a torn one. It holds::

    round          last completed round (0 = the initial training)
    labeled        pool indices into x_train, in acquisition order
    variables      flax variables after that round's training (``to_bytes``)
    strategy_state the strategy's carried state (tagged msgpack, see encode_tree)
    records        every round record so far (so records.jsonl can be repaired)
    config         the run's config and its fingerprint

wrapped with a SHA-256 checksum of the payload. Random keys need no storing: the loop
derives each round's keys from the seed with ``fold_in``.

A checkpoint that fails its checksum, cannot be parsed, or belongs to another config
raises :class:`CheckpointError` (a ``ValueError``); nothing is overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from typing import Any, Mapping, NamedTuple

import msgpack
import numpy as np
from flax import serialization

from jaxal.atomic import write_atomic  # noqa: F401 - re-exported: this module's writes and its callers'

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "save",
    "load",
    "peek_round",
    "fingerprint",
    "write_atomic",
    "encode_tree",
    "decode_tree",
]

FORMAT = "jaxal-checkpoint"
# 2: jaxal 0.2 draws mini-batch orders, candidate subsets and initial sets on the host
# and batches epochs differently, so a run checkpointed by 0.1 cannot continue with the
# random stream it started with.
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint is corrupt, unreadable, or belongs to a different config."""


class Checkpoint(NamedTuple):
    """A restored checkpoint.

    Attributes:
      round: last completed round (0 = initial training only).
      labeled: ``[L]`` int64 pool indices in acquisition order.
      variables: flax variables restored onto the given template.
      strategy_state: the strategy's state (``None`` when stateless).
      records: list of round-record dicts, rounds ``0..round``.
      fingerprint: the config fingerprint stored with it.
    """

    round: int
    labeled: np.ndarray
    variables: Any
    strategy_state: Any
    records: list
    fingerprint: str


# --------------------------------------------------------------------------- config


def _canonical(config: Mapping[str, Any]) -> dict:
    """JSON round trip: tuples become lists, keys strings, so equal configs compare equal."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def fingerprint(config: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """SHA-256 (hex) of the canonical JSON of ``config`` without the ``ignore`` keys."""
    c = {k: v for k, v in _canonical(config).items() if k not in ignore}
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable lines ``key: stored -> requested`` for keys that differ."""
    ca, cb = _canonical(a), _canonical(b)
    keys = sorted((set(ca) | set(cb)) - set(ignore))
    return [f"{k}: {ca.get(k)!r} -> {cb.get(k)!r}" for k in keys if ca.get(k) != cb.get(k)]


# --------------------------------------------------------------------------- pytrees


def encode_tree(tree: Any) -> Any:
    """Encode a pytree / JSON-like object into msgpack-able primitives, keeping types.

    Handles None, bool, int, float, str, bytes, numpy/JAX arrays and scalars, lists,
    tuples, dicts, NamedTuples and dataclasses (classes are re-imported by module and
    qualified name on decode, so they must be importable).
    """
    if tree is None or isinstance(tree, (bool, int, float, str, bytes)):
        return tree
    if isinstance(tree, np.generic):
        return {"__t": "scalar", "dtype": tree.dtype.str, "v": tree.item()}
    if hasattr(tree, "__array__") and hasattr(tree, "shape") and hasattr(tree, "dtype"):
        a = np.asarray(tree)
        return {"__t": "array", "dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        return {
            "__t": "namedtuple",
            "cls": [cls.__module__, cls.__qualname__],
            "v": {f: encode_tree(getattr(tree, f)) for f in tree._fields},
        }
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        cls = type(tree)
        return {
            "__t": "dataclass",
            "cls": [cls.__module__, cls.__qualname__],
            "v": {f.name: encode_tree(getattr(tree, f.name)) for f in dataclasses.fields(tree)},
        }
    if isinstance(tree, (list, tuple)):
        return {"__t": type(tree).__name__, "v": [encode_tree(x) for x in tree]}
    if isinstance(tree, Mapping):
        return {"__t": "dict", "k": [encode_tree(k) for k in tree], "v": [encode_tree(v) for v in tree.values()]}
    raise TypeError(f"cannot checkpoint strategy state of type {type(tree).__name__}")


def _import_class(module: str, qualname: str) -> type:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def decode_tree(obj: Any) -> Any:
    """Inverse of :func:`encode_tree` (arrays come back as numpy arrays)."""
    if not isinstance(obj, dict):
        return obj
    tag = obj["__t"]
    if tag == "scalar":
        return np.dtype(obj["dtype"]).type(obj["v"])
    if tag == "array":
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if tag == "list":
        return [decode_tree(x) for x in obj["v"]]
    if tag == "tuple":
        return tuple(decode_tree(x) for x in obj["v"])
    if tag == "dict":
        return {decode_tree(k): decode_tree(v) for k, v in zip(obj["k"], obj["v"])}
    if tag in ("namedtuple", "dataclass"):
        cls = _import_class(*obj["cls"])
        fields = {k: decode_tree(v) for k, v in obj["v"].items()}
        if tag == "namedtuple" and not (isinstance(cls, type) and issubclass(cls, tuple)):
            raise CheckpointError(f"checkpoint names {obj['cls']} as a NamedTuple but it is not one")
        if tag == "dataclass" and not dataclasses.is_dataclass(cls):
            raise CheckpointError(f"checkpoint names {obj['cls']} as a dataclass but it is not one")
        return cls(**fields)
    raise CheckpointError(f"unknown tag {tag!r} in checkpoint strategy state")


# --------------------------------------------------------------------------- save/load


def save(
    path: str | os.PathLike,
    *,
    round: int,
    labeled: Any,
    variables: Any,
    strategy_state: Any,
    records: list,
    config: Mapping[str, Any],
    fingerprint: str,
) -> None:
    """Atomically write a checksummed checkpoint of the run after ``round``."""
    payload = msgpack.packb(
        {
            "round": int(round),
            "labeled": [int(i) for i in np.asarray(labeled).reshape(-1)],
            "variables": serialization.to_bytes(variables),
            "strategy_state": encode_tree(strategy_state),
            "records": json.dumps(records),
            "config": json.dumps(_canonical(config), sort_keys=True),
            "fingerprint": fingerprint,
        },
        use_bin_type=True,
    )
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    write_atomic(path, msgpack.packb(envelope, use_bin_type=True))


def peek_round(path: str | os.PathLike) -> int | None:
    """The last completed round a checkpoint holds, read without verifying or restoring it.

    Cheap enough to ask of every run of a grid before deciding which to resume.
    ``None`` when the file cannot be read; :func:`load` then says why.
    """
    try:
        with open(os.fspath(path), "rb") as f:
            envelope = msgpack.unpackb(f.read(), raw=False)
        return int(msgpack.unpackb(envelope["payload"], raw=False)["round"])
    except Exception:  # noqa: BLE001 - unreadable: load() reports it
        return None


def load(
    path: str | os.PathLike,
    *,
    variables_template: Any,
    fingerprint: str | None = None,
    config: Mapping[str, Any] | None = None,
    ignore: tuple[str, ...] = (),
) -> Checkpoint:
    """Read and verify a checkpoint.

    Args:
      path: the checkpoint file.
      variables_template: a pytree with the structure of the saved variables (a fresh
        ``init``), onto which the saved values are restored.
      fingerprint: the requested config's fingerprint; a different stored one is refused.
      config: the requested config, used only to say which keys differ.
      ignore: config keys excluded from the fingerprint (shown nowhere in the diff).

    Raises:
      CheckpointError: unreadable file, bad checksum, wrong format, or config mismatch.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            envelope = msgpack.unpackb(f.read(), raw=False)
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
            raise ValueError("not a jaxal checkpoint")
        payload = envelope["payload"]
        stored_sum = envelope["sha256"]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is unusable
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({e}); refusing to resume. Move it away or "
            "start a new run with another --out."
        ) from e
    if envelope.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {envelope.get('version')}, expected {VERSION}: it was written by "
            "another jaxal version, whose random draws differ, so the run cannot be continued; start it again in a "
            "new directory (or without --resume after moving this one away)")
    if hashlib.sha256(payload).hexdigest() != stored_sum:
        raise CheckpointError(
            f"checkpoint {path} is corrupt (checksum mismatch); refusing to resume. Move it "
            "away or start a new run with another --out."
        )
    body = msgpack.unpackb(payload, raw=False)
    if fingerprint is not None and body["fingerprint"] != fingerprint:
        diff = config_diff(json.loads(body["config"]), config, ignore) if config is not None else []
        detail = ("; differences (stored -> requested): " + "; ".join(diff)) if diff else ""
        raise CheckpointError(
            f"checkpoint {path} was written by a different config{detail}. Resume with the "
            "same settings, or start a new run with another --out."
        )
    try:
        variables = serialization.from_bytes(variables_template, body["variables"])
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: saved parameters do not fit the model ({e})") from e
    return Checkpoint(
        round=int(body["round"]),
        labeled=np.asarray(body["labeled"], dtype=np.int64),
        variables=variables,
        strategy_state=decode_tree(body["strategy_state"]),
        records=json.loads(body["records"]),
        fingerprint=body["fingerprint"],
    )
