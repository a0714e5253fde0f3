"""Checkpoint files: exact round trip, checksum, config fingerprint, atomic writes."""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.experiment import checkpoint as ckpt


class BanditState(NamedTuple):
    weights: np.ndarray
    t: int


def variables():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "params": {"dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jnp.zeros(4)}},
        "batch_stats": {"mean": jax.random.normal(k2, (4,))},
    }


CONFIG = {"dataset": "digits", "budget": 5, "rounds": 3, "model_options": {"widths": (16,)}}


def save(path, state=None, config=CONFIG):
    ckpt.save(
        path,
        round=2,
        labeled=[5, 1, 9, 3],
        variables=variables(),
        strategy_state=state,
        records=[{"round": 0, "test_accuracy": 0.5}],
        config=config,
        fingerprint=ckpt.fingerprint(config, ignore=("rounds",)),
    )


def test_round_trip_is_exact(tmp_path):
    state = {
        "bandit": BanditState(weights=np.arange(3, dtype=np.float32) / 7, t=4),
        1: (np.int64(3), [None, "x", 2.5, True]),
        "key_data": jax.random.key_data(jax.random.key(3)),
    }
    path = tmp_path / "c.msgpack"
    save(path, state)
    template = jax.tree.map(jnp.zeros_like, variables())
    got = ckpt.load(path, variables_template=template, fingerprint=ckpt.fingerprint(CONFIG, ignore=("rounds",)))
    assert got.round == 2
    np.testing.assert_array_equal(got.labeled, [5, 1, 9, 3])  # acquisition order kept
    for a, b in zip(jax.tree.leaves(got.variables), jax.tree.leaves(variables())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s = got.strategy_state
    assert isinstance(s["bandit"], BanditState) and s["bandit"].t == 4
    np.testing.assert_array_equal(s["bandit"].weights, state["bandit"].weights)
    assert s["bandit"].weights.dtype == np.float32
    assert s[1][0] == 3 and s[1][0].dtype == np.int64 and s[1][1] == [None, "x", 2.5, True]
    assert isinstance(s[1], tuple)
    np.testing.assert_array_equal(s["key_data"], np.asarray(state["key_data"]))
    assert got.records == [{"round": 0, "test_accuracy": 0.5}]


def test_fingerprint_ignores_order_tuples_and_listed_keys():
    a = ckpt.fingerprint({"x": (1, 2), "y": 1, "rounds": 3}, ignore=("rounds",))
    b = ckpt.fingerprint({"y": 1, "x": [1, 2], "rounds": 9}, ignore=("rounds",))
    c = ckpt.fingerprint({"y": 2, "x": [1, 2], "rounds": 3}, ignore=("rounds",))
    assert a == b != c


def test_flipped_byte_and_garbage_are_refused(tmp_path):
    path = tmp_path / "c.msgpack"
    save(path)
    good = path.read_bytes()
    template = variables()
    for i in range(len(good) - 40, len(good), 7):  # bytes inside the payload
        blob = bytearray(good)
        blob[i] ^= 0x01
        path.write_bytes(bytes(blob))
        with pytest.raises(ckpt.CheckpointError, match="corrupt|unreadable"):
            ckpt.load(path, variables_template=template)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load(path, variables_template=template)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load(path, variables_template=template)


def test_other_config_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "c.msgpack"
    save(path)
    other = {**CONFIG, "budget": 7}
    with pytest.raises(ckpt.CheckpointError, match=r"budget: 5 -> 7"):
        ckpt.load(
            path,
            variables_template=variables(),
            fingerprint=ckpt.fingerprint(other, ignore=("rounds",)),
            config=other,
            ignore=("rounds",),
        )
    # rounds is ignored: extending a run is allowed
    more = {**CONFIG, "rounds": 10}
    ckpt.load(path, variables_template=variables(), fingerprint=ckpt.fingerprint(more, ignore=("rounds",)))


def test_params_of_another_model_are_refused(tmp_path):
    path = tmp_path / "c.msgpack"
    save(path)
    wrong = {"params": {"other": {"kernel": jnp.zeros((3, 4))}}}
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load(path, variables_template=wrong)


def test_write_atomic_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    ckpt.write_atomic(path, b"old")

    def boom(src, dst):
        raise KeyboardInterrupt  # a kill between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomic(path, b"new contents")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]  # no temp file left behind
    ckpt.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"


def test_unsupported_state_type_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="strategy state"):
        save(tmp_path / "c.msgpack", state={"f": lambda x: x})


def test_a_checkpoint_of_another_version_is_refused_with_what_to_do(tmp_path):
    import msgpack

    path = tmp_path / "c.msgpack"
    save(path)
    envelope = msgpack.unpackb(path.read_bytes(), raw=False)
    envelope["version"] = ckpt.VERSION - 1  # written before the random draws moved to the host
    path.write_bytes(msgpack.packb(envelope, use_bin_type=True))
    with pytest.raises(ckpt.CheckpointError, match="another jaxal version.*new directory"):
        ckpt.load(path, variables_template=variables())
