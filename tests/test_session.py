"""The labeling session: a simulated annotator against `jaxal run`, instant mode against a
fresh look-ahead solve, kills during teach/fit, bad input, and the command line."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from jaxal import data
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import run
from jaxal.labeling import session as session_lib
from jaxal.labeling.session import (
    CorruptSessionError,
    LabelConflictError,
    LabelRangeError,
    Session,
    SessionError,
    SessionExistsError,
    SessionLockedError,
    UnknownIndexError,
)
from jaxal.lookahead import Sequential
from jaxal.training.train import TrainConfig

FAST = TrainConfig(max_epochs=30, batch_size=32)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=3)


def test_simulated_annotator_labels_what_jaxal_run_labels(tmp_path, digits):
    config = ExperimentConfig(strategy="margin", rounds=2, budget=8, initial_size=10, seed=3,
                              model_options={"widths": (32,)}, train=FAST)
    records = run(config, tmp_path / "run", progress=False)
    y = np.asarray(digits.y_train)
    with Session.create(tmp_path / "s", np.asarray(digits.x_train), num_classes=10, config=config,
                        heldout=(digits.x_test, digits.y_test)) as s:
        for budget in (None, 8, 8):  # the initial set (config.initial_size), then two strategy rounds
            idx = s.query(budget)
            assert s.teach(idx, y[idx], annotator="oracle") == len(idx)
        s.fit()
        history = s.history
    assert [r["chosen"] for r in history] == [r["chosen"] for r in records]
    for a, b in zip(records, history):
        assert a["test_accuracy"] == b["test_accuracy"] and a["signals"] == b["signals"]
        assert a["info"] == b["info"]
    # reopened, everything is there: the answers with who answered, the model's rounds
    with Session.open(tmp_path / "s") as s:
        assert s.round == 2 and len(s.labels) == 26 and not len(s.pending)
        assert all(a["annotator"] == "oracle" and a["queried"] for a in s.answers)
        assert s.status()["heldout_accuracy"] == records[-1]["test_accuracy"]


def _instant_session(tmp_path, digits, **kw):
    x, y = np.asarray(digits.x_train)[:120], np.asarray(digits.y_train)[:120]
    config = ExperimentConfig(strategy="mlmoc", initial_size=12, budget=1, seed=0, model_options={"widths": (16,)},
                              train=TrainConfig(max_epochs=20, batch_size=32, loss="squared"), start="warm")
    s = Session.create(tmp_path / "inst", x, num_classes=10, config=config, instant=True, **kw)
    idx = s.query()
    s.teach(idx, y[idx])  # with retrain_every, this trains already
    if len(s.pending):
        s.fit()
    assert s.round == 0
    return s, x, y


def test_instant_mode_after_each_teach_equals_a_fresh_solve(tmp_path, digits):
    s, x, y = _instant_session(tmp_path, digits)
    try:
        for _ in range(2):
            i = int(s.query(1)[0])
            s.teach([i], [y[i]])
            seq, rows = s._seq
            known = np.array(list(s.labels))
            fresh = Sequential(s.model(), x[known], y[known], x_pool=x[rows], num_classes=10)
            # the rank-1 update is the posterior of a solve with the answer in the labeled set
            # (the scores differ by design: a fresh solve measures change from the network again)
            scale = np.abs(fresh.predictions()).max()
            np.testing.assert_allclose(seq.predictions(), fresh.predictions(), atol=2e-3 * scale)
            cov, cov_fresh = np.asarray(seq.state.cov), np.asarray(fresh.state.cov)
            np.testing.assert_allclose(cov, cov_fresh, atol=2e-3 * np.abs(cov_fresh).max())
            assert s.round == 0  # no retraining between the answers
        nxt = int(s.query(1)[0])
        assert nxt == rows[int(np.argmax(seq.scores()))] and nxt not in s.labels
    finally:
        s.close()
    with Session.open(tmp_path / "inst") as s:  # the absorbed state is stored: the same next point
        assert int(s.query(1)[0]) == nxt


def test_instant_mode_retrains_every_k_answers(tmp_path, digits):
    s, x, y = _instant_session(tmp_path, digits, retrain_every=2)
    with s:
        for expected_round in (0, 1):  # no retrain after the first answer, one after the second
            i = int(s.query(1)[0])
            s.teach([i], [y[i]])
            assert s.round == expected_round
        assert not len(s.pending) and s._seq is None


def test_a_kill_during_fit_or_teach_loses_nothing(tmp_path, digits, monkeypatch):
    x, y = np.asarray(digits.x_train)[:200], np.asarray(digits.y_train)[:200]
    config = ExperimentConfig(strategy="entropy", initial_size=10, budget=5, model_options={"widths": (16,)},
                              train=TrainConfig(max_epochs=10, batch_size=32))

    def killer(event, r):
        if event == "trained":
            raise KeyboardInterrupt

    Session.create(tmp_path / "k", x, num_classes=10, config=config).close()
    with Session.open(tmp_path / "k", on_event=killer) as s:
        idx = s.query()
        s.teach(idx, y[idx])
        with pytest.raises(KeyboardInterrupt):
            s.fit()
    with Session.open(tmp_path / "k") as s:
        assert s.round == -1 and sorted(s.pending.tolist()) == sorted(idx.tolist())
        record = s.fit()
        idx2 = s.query()
        # a kill while the answers are written: the file is replaced atomically, so it holds the old answers
        real = os.replace

        def dying_replace(src, dst):
            if str(dst).endswith("labels.jsonl"):
                raise KeyboardInterrupt
            return real(src, dst)

        monkeypatch.setattr(os, "replace", dying_replace)
        with pytest.raises(KeyboardInterrupt):
            s.teach(idx2, y[idx2])
        monkeypatch.setattr(os, "replace", real)
    with Session.open(tmp_path / "k") as s:
        assert len(s.labels) == 10 and s.round == 0
        assert s.teach(idx2, y[idx2]) == 5
    # an uninterrupted twin trains the same model
    with Session.create(tmp_path / "twin", x, num_classes=10, config=config) as t:
        t.teach(idx, y[idx])
        assert t.fit()["train_loss"] == record["train_loss"]


def test_bad_input_is_named_and_stores_nothing(tmp_path, digits):
    x = np.asarray(digits.x_train)[:50]
    config = ExperimentConfig(strategy="random", initial_size=5, budget=5, model_options={"widths": (8,)})
    with pytest.raises(SessionError, match="num_classes or classes"):
        Session.create(tmp_path / "a", x, config=config)
    with pytest.raises(SessionError, match="instant mode needs a look-ahead"):
        Session.create(tmp_path / "a", x, num_classes=10, config=config, instant=True)
    with pytest.raises(SessionError, match="use instant=True"):  # sequential mode would read held labels
        Session.create(tmp_path / "a", x, num_classes=10, config=dataclasses.replace(config, strategy="mlmoc",
                                                                                      sequential=True))
    s = Session.create(tmp_path / "a", x, classes=[f"d{k}" for k in range(10)], config=config)
    try:
        with pytest.raises(SessionExistsError):
            Session.create(tmp_path / "a", x, num_classes=10, config=config)
        with pytest.raises(SessionLockedError, match="another process"):
            Session.open(tmp_path / "a")
        idx = s.query()
        with pytest.raises(UnknownIndexError, match=r"outside the pool \[0, 50\)"):
            s.teach([3, 50], [1, 1])
        with pytest.raises(LabelRangeError, match="d0"):
            s.teach([3], [10])
        with pytest.raises(LabelRangeError):
            s.teach([3], ["cat"])
        with pytest.raises(LabelConflictError, match="earlier in this call"):
            s.teach([3, 3], [1, 2])
        assert s.labels == {}  # every failed call stored nothing
        assert s.teach([int(idx[0]), 49], ["d4", 7]) == 2
        with pytest.raises(LabelConflictError, match="was labeled 'd4'"):
            s.teach([int(idx[0])], ["d5"])
        assert s.teach([int(idx[0])], ["d4"]) == 0  # the same answer again: nothing new
        assert {a["index"]: a["queried"] for a in s.answers} == {int(idx[0]): True, 49: 49 in idx}
    finally:
        s.close()
    (tmp_path / "a" / "session.json").write_text("{not json")
    with pytest.raises(CorruptSessionError, match="session.json"):
        Session.open(tmp_path / "a")
    with pytest.raises(CorruptSessionError, match="not a labeling session"):
        Session.open(tmp_path)


def test_label_your_own_images_from_the_command_line(tmp_path, capsys, digits):
    from PIL import Image

    from jaxal.cli import main

    images = tmp_path / "imgs"
    images.mkdir()
    x, y = np.asarray(digits.x_train)[:60], np.asarray(digits.y_train)[:60]  # standardised: map to 8-bit images
    raw = np.clip((x - x.min()) / (np.ptp(x) + 1e-9) * 255, 0, 255).astype(np.uint8)
    for i in range(60):
        Image.fromarray(raw[i].reshape(8, 8)).save(images / f"im{i:03d}.png")
    d = str(tmp_path / "S")
    classes = ",".join(f"c{k}" for k in range(10))
    assert main(["session", "init", d, "--pool", str(images), "--classes", classes, "--widths", "8",
                 "--initial", "6", "--budget", "4", "--epochs", "5"]) == 0
    assert os.path.exists(os.path.join(d, "label_studio_config.xml"))
    batch = tmp_path / "b.csv"
    assert main(["session", "query", d, "--to", str(batch)]) == 0
    rows = list(csv.DictReader(open(batch)))
    assert len(rows) == 6 and all(r["file"].endswith(".png") and r["label"] == "" for r in rows)
    with open(batch, "w", newline="") as f:  # the annotator answers by file name and class name
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for r in rows:
            w.writerow([r["file"], f"c{y[int(r['file'][2:5])]}"])
    assert main(["session", "teach", d, "--from", str(batch), "--annotator", "me"]) == 0
    assert "6 new labels" in capsys.readouterr().out
    tasks = tmp_path / "t.json"
    assert main(["session", "query", d, "--to", str(tasks)]) == 0
    assert "trained on 6 labels first" in capsys.readouterr().out
    export = [{"id": 900 + k, "data": t["data"], "annotations": [{"completed_by": {"email": "a@b.c"},
              "created_at": "2026-12-01T10:00:00Z", "was_cancelled": False,
              "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                          "value": {"choices": [f"c{y[t['data']['index']]}"]}}]}]}
              for k, t in enumerate(json.load(open(tasks)))]
    (tmp_path / "export.json").write_text(json.dumps(export))
    assert main(["session", "teach", d, "--from", str(tmp_path / "export.json"), "--fit"]) == 0
    assert main(["session", "status", d, "--json"]) == 0
    out = capsys.readouterr().out
    status = json.loads(out[out.index("{"):])
    assert status["labels"] == 10 and status["fits"] == 2 and sum(status["class_counts"].values()) == 10
    assert os.path.getsize(os.path.join(d, "status.png")) > 5000
    labels = [json.loads(line) for line in open(os.path.join(d, "labels.jsonl"))]
    assert [a["annotator"] for a in labels] == ["me"] * 6 + ["a@b.c"] * 4
    assert all(a["label"] == y[a["index"]] for a in labels)
    # bad input: one line, exit 2, nothing stored
    (tmp_path / "bad.csv").write_text("index,label\n3,c99\n")
    assert main(["session", "teach", d, "--from", str(tmp_path / "bad.csv")]) == 2
    assert "c99" in capsys.readouterr().err
    assert len(open(os.path.join(d, "labels.jsonl")).readlines()) == 10


def test_session_module_documents_its_files():
    for name in (session_lib.SESSION_FILE, session_lib.POOL_FILE, session_lib.LABELS_FILE, session_lib.QUERIES_FILE,
                 session_lib.CHECKPOINT_FILE, session_lib.PENDING_FILE, session_lib.INSTANT_FILE):
        assert name in session_lib.__doc__
