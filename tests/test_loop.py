"""The active-learning loop: invariants, resume after a kill, refusals, bad input."""

import dataclasses
import json

import numpy as np
import pytest

from jaxal import data
from jaxal.experiment.checkpoint import CheckpointError
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import RunExistsError, run
from jaxal.model import predict_probs
from jaxal.strategies.base import Query, register, top_k_indices
from jaxal.strategies.uncertainty import entropy_scores
from jaxal.training.train import TrainConfig

DIGITS = data.load("digits", seed=3)  # the split of tiny()'s seed


@register("_test_loop_spy")
def spy(key, ctx, budget):
    """Entropy picks, plus checks on what the loop hands over.

    The carried state holds last round's labeled inputs: the loop must hand the state
    back (also across a resume) and keep x_labeled in acquisition order, i.e. last
    round's rows first, then exactly `budget` new ones appended.
    """
    if ctx.state is None:
        assert ctx.round == 0 and ctx.x_labeled.shape[0] == 10
    else:
        assert ctx.state["round"] == ctx.round - 1
        assert ctx.x_labeled.shape[0] == ctx.state["x_labeled"].shape[0] + budget
        np.testing.assert_array_equal(ctx.x_labeled[: ctx.state["x_labeled"].shape[0]], ctx.state["x_labeled"])
    scores = entropy_scores(predict_probs(ctx.model, ctx.x_pool))
    idx = top_k_indices(scores, budget, key)
    state = {"round": ctx.round, "x_labeled": np.asarray(ctx.x_labeled)}
    return Query(indices=idx, info={"max_score": float(np.max(scores))}, state=state)


def seq_query(key, ctx, budget, oracle):
    """A sequential strategy: picks the first `budget` rows, asking the oracle for each."""
    labels = [oracle(i) for i in range(budget)]
    return Query(indices=np.arange(budget), info={"labels": labels})


def with_sequential(key, ctx, budget):
    return np.arange(budget)


register("_test_loop_sequential", sequential=seq_query)(with_sequential)


def tiny(**overrides):
    base = ExperimentConfig(
        dataset="digits",
        model="mlp",
        model_options={"widths": (16,)},
        strategy="_test_loop_spy",
        initial_size=10,
        budget=5,
        rounds=3,
        seed=3,
        start="warm",
        candidates=60,
        train=TrainConfig(max_epochs=3, batch_size=16),
    )
    return dataclasses.replace(base, **overrides)


def strip_timings(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


class Killed(Exception):
    pass


def test_labeled_set_grows_by_budget_and_never_repeats(tmp_path):
    cfg = tiny()
    records = run(cfg, tmp_path, progress=False)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["n_labeled"] for r in records] == [10, 15, 20, 25]
    chosen = [i for r in records for i in r["chosen"]]
    assert len(chosen) == len(set(chosen)) == 25
    assert all(0 <= i < DIGITS.x_train.shape[0] for i in chosen)
    for r in records[1:]:
        assert len(r["chosen"]) == cfg.budget
        assert "max_score" in r["info"]
    # records on disk equal the returned ones; config written once
    on_disk = [json.loads(line) for line in open(tmp_path / "records.jsonl")]
    assert on_disk == records
    assert json.load(open(tmp_path / "config.json"))["budget"] == 5


def test_same_seed_same_start_across_strategies(tmp_path):
    a = run(tiny(rounds=0), tmp_path / "a", progress=False)
    b = run(tiny(rounds=0, strategy="random"), tmp_path / "b", progress=False)
    assert a[0]["chosen"] == b[0]["chosen"]
    assert a[0]["test_accuracy"] == b[0]["test_accuracy"]
    c = run(tiny(rounds=0, seed=4), tmp_path / "c", progress=False)
    assert c[0]["chosen"] != a[0]["chosen"]


@pytest.mark.parametrize("kill_at", [("trained", 2), ("recorded", 1)])
def test_resume_after_kill_matches_uninterrupted(tmp_path, kill_at):
    """Kill mid-round (after training, before the record; or after the record, before
    the checkpoint) then resume: same records as an uninterrupted run, none repeated."""
    cfg = tiny()
    full = run(cfg, tmp_path / "full", progress=False)

    def hook(event, r):
        if (event, r) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, tmp_path / "killed", progress=False, on_event=hook)
    resumed = run(cfg, tmp_path / "killed", resume=True, progress=False)
    assert strip_timings(resumed) == strip_timings(full)
    on_disk = [json.loads(line) for line in open(tmp_path / "killed" / "records.jsonl")]
    assert strip_timings(on_disk) == strip_timings(full)


def test_resume_extends_rounds_and_finished_run_is_noop(tmp_path):
    short = run(tiny(rounds=1), tmp_path, progress=False)
    longer = run(tiny(rounds=2), tmp_path, resume=True, progress=False)
    assert strip_timings(longer[:2]) == strip_timings(short)
    assert len(longer) == 3
    again = run(tiny(rounds=2), tmp_path, resume=True, progress=False)
    assert again == longer


def test_existing_run_refused_without_resume(tmp_path):
    run(tiny(rounds=0), tmp_path, progress=False)
    before = open(tmp_path / "records.jsonl").read()
    with pytest.raises(RunExistsError, match="resume"):
        run(tiny(rounds=0), tmp_path, progress=False)
    assert open(tmp_path / "records.jsonl").read() == before


def test_mismatched_and_corrupt_checkpoints_refused(tmp_path):
    run(tiny(rounds=1), tmp_path, progress=False)
    ck = tmp_path / "checkpoint.msgpack"
    with pytest.raises(CheckpointError, match="budget"):
        run(tiny(rounds=1, budget=4), tmp_path, resume=True, progress=False)
    # a config.json that still matches but a checkpoint from another run
    blob = bytearray(ck.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    ck.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt|unreadable"):
        run(tiny(rounds=2), tmp_path, resume=True, progress=False)
    assert ck.read_bytes() == bytes(blob)  # never overwritten


def test_sequential_mode_passes_an_oracle(tmp_path):
    records = run(
        tiny(strategy="_test_loop_sequential", sequential=True, rounds=1, candidates=None), tmp_path, progress=False
    )
    chosen = records[1]["chosen"]
    assert records[1]["info"]["labels"] == [int(DIGITS.y_train[i]) for i in chosen]
    assert records[1]["info"]["oracle_calls"] == 5
    with pytest.raises(ValueError, match="_test_loop_sequential"):
        run(tiny(strategy="entropy", sequential=True), tmp_path / "x", progress=False)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"budget": 0}, "budget"),
        ({"budget": -3}, "budget"),
        ({"budget": 1000, "rounds": 2}, "budget"),
        ({"initial_size": DIGITS.x_train.shape[0], "candidates": None}, "pool is empty"),
        ({"initial_size": DIGITS.x_train.shape[0] + 1}, "initial_size"),
        ({"dataset": "nope"}, "dataset.*digits"),
        ({"model": "nope"}, "model.*mlp"),
        ({"strategy": "nope"}, "strategy.*entropy"),
        ({"start": "lukewarm"}, "start"),
        ({"candidates": 2}, "candidates"),
        ({"rounds": -1}, "rounds"),
    ],
)
def test_bad_inputs_name_the_argument(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run(tiny(**overrides), tmp_path, progress=False)
    assert not (tmp_path / "records.jsonl").exists()


def test_strategy_options_checked_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="strategy 'entropy' takes no option no_such_option"):
        run(tiny(strategy="entropy", strategy_options={"no_such_option": 1}), out, progress=False)
    assert not out.exists()


def test_a_grid_loads_each_data_set_once_and_shares_it_read_only(tmp_path, monkeypatch):
    """Runs given one ``datasets`` dict load the data once (per seed: digits splits by
    seed) and get the same read-only arrays; records equal those of separate loads."""
    data_lib = data
    calls = []
    real_load = data_lib.load
    monkeypatch.setattr(data_lib, "load", lambda *a, **k: calls.append((a, k)) or real_load(*a, **k))
    datasets: dict = {}
    cfg = tiny(strategy="random", rounds=1)
    a = run(cfg, tmp_path / "a", progress=False, datasets=datasets)
    b = run(dataclasses.replace(cfg, strategy="entropy"), tmp_path / "b", progress=False, datasets=datasets)
    assert len(calls) == 1 and len(datasets) == 1
    ds = next(iter(datasets.values()))
    assert not ds.x_train.flags.writeable
    with pytest.raises(ValueError):
        ds.x_train[0, 0] = 1.0
    run(dataclasses.replace(cfg, seed=1), tmp_path / "c", progress=False, datasets=datasets)
    assert len(calls) == 2  # another seed, another digits split
    fresh = run(cfg, tmp_path / "d", progress=False)
    assert [r["chosen"] for r in fresh] == [r["chosen"] for r in a]
    assert [r["test_accuracy"] for r in fresh] == [r["test_accuracy"] for r in a]
    assert b[-1]["n_labeled"] == a[-1]["n_labeled"]
    assert data_lib.load_key("mnist1d", seed=0) == data_lib.load_key("mnist1d", seed=3)
    assert data_lib.load_key("digits", seed=0) != data_lib.load_key("digits", seed=3)
