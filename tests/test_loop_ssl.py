"""The loop's semi-supervised route: the trainer sees exactly the labeled and unlabeled rows."""

import json

import numpy as np
import pytest

from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import run
from jaxal.training import ssl
from jaxal.training.train import TrainConfig


def _config(**kw):
    base = dict(model_options={"widths": (16,)}, strategy="random", initial_size=20, budget=10, rounds=1,
                train=TrainConfig(max_epochs=3), trainer="pseudo_label", ssl_options={"steps": 5})
    base.update(kw)
    return ExperimentConfig(**base)


def test_ssl_trainer_gets_labeled_and_complementary_unlabeled_rows(tmp_path, monkeypatch):
    calls = []
    real = ssl.get_trainer("pseudo_label")

    def spy(key, module, variables, x_l, y_l, x_u, num_classes, train_config, ssl_config):
        calls.append((np.asarray(x_l), np.asarray(y_l), np.asarray(x_u), ssl_config))
        return real(key, module, variables, x_l, y_l, x_u, num_classes, train_config, ssl_config)

    monkeypatch.setitem(ssl._TRAINERS, "pseudo_label", spy)
    records = run(_config(), str(tmp_path), progress=False)
    assert [r["n_labeled"] for r in records] == [20, 30]
    from jaxal import data

    x_all = data.load("digits").x_train
    for (x_l, y_l, x_u, cfg), n_l in zip(calls, [20, 30]):
        assert x_l.shape[0] == n_l and x_u.shape[0] == x_all.shape[0] - n_l
        # labeled ∪ unlabeled is the whole training set, with no row in both
        rows = np.concatenate([x_l, x_u])
        assert np.unique(rows, axis=0).shape[0] == np.unique(x_all, axis=0).shape[0]
        assert cfg.steps == 5 and cfg.augment is not None
    assert json.loads((tmp_path / "config.json").read_text())["trainer"] == "pseudo_label"


@pytest.mark.parametrize("kw,match", [
    (dict(trainer="mixmatch"), "unknown trainer"),
    (dict(ssl_options={"steps": 0}), "steps"),
    (dict(trainer="supervised", ssl_options={"steps": 5}), "ssl_options"),
])
def test_bad_trainer_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run(_config(**kw), str(tmp_path), progress=False)
