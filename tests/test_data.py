"""Data sets, initial labeled sets and candidate subsamples."""

import jax
import numpy as np
import pytest

from jaxal import data


def test_digits_split_and_normalisation():
    d = data.load("digits", seed=0)
    assert d.name == "digits" and d.num_classes == 10
    assert d.x_train.shape == (1347, 64) and d.x_test.shape == (450, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    varying = d.x_train.std(0) > 0
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0)[varying], 1.0, rtol=1e-4)
    assert np.all(d.x_train[:, ~varying] == 0)  # constant pixels are only centred
    # stratified: every class has the same share (up to rounding) in both splits
    tr, te = np.bincount(d.y_train, minlength=10), np.bincount(d.y_test, minlength=10)
    np.testing.assert_allclose(te / (tr + te), 0.25, atol=0.01)
    # seeded: same seed, same split; another seed, another split
    assert np.array_equal(data.load("digits", seed=0).y_test, d.y_test)
    assert not np.array_equal(data.load("digits", seed=1).y_test, d.y_test)
    # the two splits together hold all 1,797 images
    from sklearn.datasets import load_digits

    raw = load_digits().data
    assert len(raw) == len(d.y_train) + len(d.y_test)


def test_mnist1d_offline_small():
    d = data.load("mnist1d", num_samples=200)
    assert d.x_train.shape == (160, 40) and d.x_test.shape == (40, 40)
    assert d.num_classes == 10 and d.y_train.min() >= 0 and d.y_train.max() <= 9
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        data.load("mnist1d", num_samples=0)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_through_data_source_mock(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=9):
        d = data.load(name, max_test=4)
        raw = tfds.data_source(name, split="train")
        images = np.stack([np.asarray(raw[i]["image"], np.float64) for i in range(len(raw))]) / 255.0
        labels = np.asarray([int(raw[i]["label"]) for i in range(len(raw))])
    assert d.x_train.shape == (9,) + shape and d.x_test.shape == (4,) + shape
    assert d.x_train.dtype == np.float32 and d.num_classes == 10
    np.testing.assert_array_equal(d.y_train, labels)
    # per-channel standardisation with training statistics, computed independently
    mean = images.mean(axis=(0, 1, 2))
    std = images.std(axis=(0, 1, 2))
    np.testing.assert_allclose(d.x_train, (images - mean) / std, rtol=1e-4, atol=1e-4)


def test_tfds_missing_says_how_to_install(monkeypatch, capsys, tmp_path):
    """Without the optional tensorflow-datasets, a TFDS name fails in one line naming the extra."""
    import sys

    from jaxal.cli import main

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"jaxal\[tfds\]"):
        data.load("mnist")
    assert main(["run", "--dataset", "mnist", "--strategy", "random", "--rounds", "0", "--quiet",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "jaxal[tfds]" in err and "Traceback" not in err


def test_npz_round_trip_and_missing_keys(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.normal(size=(6, 3, 2)).astype(np.float32), y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=rng.normal(size=(2, 3, 2)).astype(np.float32), y_test=np.array([2, 1]),
    )
    path = tmp_path / "toy.npz"
    np.savez(path, **arrays)
    d = data.load(str(path))
    assert d.num_classes == 3 and d.name == "toy.npz"
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(d, k), v)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(ValueError, match="x_test, y_test"):
        data.load(str(bad))
    nan = tmp_path / "nan.npz"
    np.savez(nan, **{**arrays, "x_test": np.full((2, 3, 2), np.nan)})
    with pytest.raises(ValueError, match="x_test contains"):
        data.load(str(nan))
    neg = tmp_path / "neg.npz"
    np.savez(neg, **{**arrays, "y_train": np.array([0, 1, 2, 0, 1, -1])})
    with pytest.raises(ValueError, match="y_train has labels outside"):
        data.load(str(neg))
    with pytest.raises(ValueError, match="no such"):
        data.load(str(tmp_path / "missing.npz"))


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="valid: cifar10, cifar100, diabetes, digits, digits_angle, fashion_mnist, friedman1, friedman2, "
                                         "friedman3, mnist, mnist1d, svhn_cropped"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="takes no option num_samples; its options: test_fraction"):
        data.load("digits", num_samples=3)


def test_initial_indices_random_and_balanced():
    y = np.repeat(np.arange(4), [5, 6, 7, 8])
    idx = data.initial_indices(jax.random.key(0), y, 10)
    assert idx.size == 10 and np.unique(idx).size == 10 and idx.min() >= 0 and idx.max() < y.size
    np.testing.assert_array_equal(idx, data.initial_indices(jax.random.key(0), y, 10))
    assert not np.array_equal(idx, data.initial_indices(jax.random.key(1), y, 10))
    bal = data.initial_indices(jax.random.key(0), y, 20, balanced=True)
    assert np.unique(bal).size == 20
    np.testing.assert_array_equal(np.bincount(y[bal], minlength=4), [5, 5, 5, 5])
    with pytest.raises(ValueError, match="divisible"):
        data.initial_indices(jax.random.key(0), y, 10, balanced=True)
    with pytest.raises(ValueError, match="class 0 has 5"):
        data.initial_indices(jax.random.key(0), y, 24, balanced=True)
    with pytest.raises(ValueError, match="larger than"):
        data.initial_indices(jax.random.key(0), y, 27)
    with pytest.raises(ValueError, match="size"):
        data.initial_indices(jax.random.key(0), y, 0)


def test_subsample():
    pool = np.arange(100, 130)
    assert np.array_equal(data.subsample(jax.random.key(0), pool, None), pool)
    assert np.array_equal(data.subsample(jax.random.key(0), pool, 50), pool)
    s = data.subsample(jax.random.key(0), pool, 7)
    assert s.size == 7 and np.unique(s).size == 7 and np.all(np.isin(s, pool))
    np.testing.assert_array_equal(s, data.subsample(jax.random.key(0), pool, 7))
    # uniform: every candidate is drawn about equally often over many keys
    counts = np.zeros(30)
    for k in jax.random.split(jax.random.key(1), 200):
        counts[data.subsample(k, pool, 6) - 100] += 1
    assert counts.min() > 15 and counts.max() < 70  # expectation 40 each
    with pytest.raises(ValueError, match="size"):
        data.subsample(jax.random.key(0), pool, 0)


def test_tfds_set_not_prepared_says_where_it_looked_and_how_to_prepare(tmp_path, capsys, monkeypatch):
    # tensorflow-datasets' own failure (here: no prepared files, no network) is replaced
    # by one line naming the directory and the way to prepare the set
    tfds = pytest.importorskip("tensorflow_datasets")

    def not_prepared(name, **kw):
        raise FileNotFoundError(f"{name} not found in {kw.get('data_dir')} and no network\nmore lines")

    monkeypatch.setattr(tfds, "data_source", not_prepared)
    with pytest.raises(ValueError, match=r"'mnist' is not prepared in .*empty.*FileNotFoundError.*--data-dir"):
        data.load("mnist", data_dir=str(tmp_path / "empty"), download=False)
    monkeypatch.setattr(data, "_online", lambda *a, **k: False)  # this machine: no network
    from jaxal.cli import main

    code = main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "is not prepared" in err and "Traceback" not in err and "more lines" not in err
    assert "no network to download it" in err


def test_tfds_offline_fails_at_once_without_asking_for_a_download(tmp_path, monkeypatch):
    # tensorflow-datasets retries an unreachable host for minutes: jaxal looks for the
    # prepared files, sees there is no network, and stops in seconds
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def source(name, **kw):
        calls.append(kw["download"])
        raise FileNotFoundError("not prepared")

    monkeypatch.setattr(tfds, "data_source", source)
    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    with pytest.raises(ValueError, match="no network to download it"):
        data.load("mnist", data_dir=str(tmp_path))
    assert calls == [False]
    monkeypatch.setattr(data, "_online", lambda *a, **k: True)  # online: the download is tried
    with pytest.raises(ValueError, match="could not be downloaded"):
        data.load("mnist", data_dir=str(tmp_path))
    assert calls == [False, False, True]


def test_online_is_false_for_an_unresolvable_host():
    assert not data._online("no-such-host.invalid", timeout=1.0)
