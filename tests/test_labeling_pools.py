"""Loading unlabeled pools to label: .npz files, image folders, TFDS splits, and the dispatcher."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from jaxal.labeling.pools import PoolError, UnlabeledPool, load_image_folder, load_npz, load_pool, load_tfds

# ---------------------------------------------------------------------------- .npz


def _npz(tmp_path, name="pool.npz", **arrays):
    path = tmp_path / name
    with open(path, "wb") as f:  # np.savez(path) would add ".npz" to any other ending
        np.savez(f, **arrays)
    return path


def test_npz_partial_labels_and_classes(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(4, 3, 2)
    path = _npz(tmp_path, x=x, y=np.array([2, -1, 0, -5]), classes=np.array(["cat", "dog", "emu"]))
    pool = load_npz(path)
    assert isinstance(pool, UnlabeledPool)
    assert pool.x.dtype == np.float32 and pool.x.shape == (4, 3, 2)
    np.testing.assert_array_equal(pool.x, x.astype(np.float32))  # cast, never rescaled
    assert pool.labels == {0: 2, 2: 0} and all(type(k) is int and type(v) is int for k, v in pool.labels.items())
    assert pool.classes == ("cat", "dog", "emu") and pool.files is None and pool.source == str(path)
    # no labels at all: an empty dict; whole-number floats are labels too
    assert load_npz(_npz(tmp_path, "bare.npz", x=x)).labels == {}
    assert load_npz(_npz(tmp_path, "f.npz", x=x, y=np.array([1.0, -1.0, 3.0, 0.0])), num_classes=4).labels == {
        0: 1, 2: 3, 3: 0}


def test_npz_labeled_index_form(tmp_path):
    x = np.zeros((5, 2), np.uint8)
    path = _npz(tmp_path, x=x, labeled_index=np.array([4, 1]), labeled_y=np.array([0, 1]))
    pool = load_npz(path, num_classes=2)
    assert pool.labels == {4: 0, 1: 1} and pool.classes is None and pool.x.dtype == np.float32


NPZ_ERRORS = [
    (dict(z=np.zeros(3), w=np.ones(2)), "no array 'x'.*z, w"),
    (dict(x=np.array(["a", "b"])), "numeric"),
    (dict(x=np.float32(3.0)), "0-dim"),
    (dict(x=np.zeros((0, 3))), "empty"),
    (dict(x=np.array([[0.0, np.nan], [1, 2], [np.inf, 0]])), "non-finite.*2 rows"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 1])), r"y has shape \(2,\).*\(3,\)"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 1.5, -1])), "non-integer"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 3, 1]), classes=np.array(["a", "b", "c"])), "below 3.*1 row has more: row 1 -> 3"),
    (dict(x=np.zeros((2, 2)), classes=np.array([["a", "b"]])), "1-D array of strings"),
    (dict(x=np.zeros((2, 2)), classes=np.array([1, 2])), "1-D array of strings"),
    (dict(x=np.zeros((2, 2)), classes=np.array(["a", "b", "a"])), "duplicate.*'a'"),
    (dict(x=np.zeros((3, 2)), labeled_index=np.array([0, 7]), labeled_y=np.array([0, 1])), "outside 0..2"),
    (dict(x=np.zeros((3, 2)), labeled_index=np.array([1, 1]), labeled_y=np.array([0, 1])), "repeats rows 1"),
    (dict(x=np.zeros((3, 2)), labeled_index=np.array([1])), "labeled_y is missing"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), labeled_index=np.array([1]), labeled_y=np.array([0])), "one way"),
]


@pytest.mark.parametrize("arrays, message", NPZ_ERRORS)
def test_npz_errors_name_file_and_problem(tmp_path, arrays, message):
    path = _npz(tmp_path, "broken_pool.npz", **arrays)
    with pytest.raises(PoolError, match=re.escape(str(path)) + ".*" + message):
        load_npz(path)


def test_npz_num_classes_and_unreadable_files(tmp_path):
    path = _npz(tmp_path, x=np.zeros((3, 2)), y=np.array([0, 2, -1]))
    assert load_npz(path).labels == {0: 0, 1: 2}  # without a class count there is nothing to exceed
    with pytest.raises(PoolError, match="pool.npz.*below 2 .num_classes=2.*row 1 -> 2"):
        load_npz(path, num_classes=2)
    assert issubclass(PoolError, ValueError)
    with pytest.raises(PoolError, match="missing.npz.*no such file"):
        load_npz(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(PoolError, match="junk.npz.*not a readable"):
        load_npz(junk)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(PoolError, match="single.npz.*single .npy array"):
        load_npz(single)
    objects = _npz(tmp_path, "objects.npz", x=np.zeros((2, 2)), classes=np.array(["a", None], dtype=object))
    with pytest.raises(PoolError, match="objects.npz.*'classes'.*unpickling"):
        load_npz(objects)


# ---------------------------------------------------------------------------- image folders


def _rgb(seed, h=6, w=5):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _gray(seed, h=6, w=5):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def test_image_folder_rows_values_and_modes(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    a, b = _rgb(0), _gray(1)
    c = np.stack([*np.meshgrid(np.arange(5) * 40, np.arange(6) * 30), np.full((6, 5), 90)], -1).astype(np.uint8)
    Image.fromarray(a).save(root / "b.png")
    Image.fromarray(b).save(root / "sub" / "deeper" / "a.PNG")  # upper-case extension counts
    Image.fromarray(c).save(root / "a.JPeG", quality=95, subsampling=0)
    Image.fromarray(a).save(root / "sub" / "z.jpg")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(a).save(root / "skip.bmp")  # only .png/.jpg/.jpeg are read
    pool = load_image_folder(root)
    assert pool.files == ("a.JPeG", "b.png", "sub/deeper/a.PNG", "sub/z.jpg")  # sorted relative POSIX paths
    assert pool.x.shape == (4, 6, 5, 3) and pool.x.dtype == np.float32  # mixed modes: RGB
    assert pool.labels == {} and pool.classes is None and pool.source == str(root)
    np.testing.assert_array_equal(pool.x[1], a.astype(np.float32) / 255)
    np.testing.assert_array_equal(pool.x[2], np.repeat(b[..., None], 3, -1).astype(np.float32) / 255)
    np.testing.assert_allclose(pool.x[0], c / 255.0, atol=0.03)  # JPEG is lossy: only close
    assert 0.0 <= pool.x.min() and pool.x.max() <= 1.0
    gray = load_image_folder(root, grayscale=True)
    assert gray.x.shape == (4, 6, 5, 1)
    np.testing.assert_array_equal(gray.x[2, ..., 0], b.astype(np.float32) / 255)


def test_image_folder_all_grayscale_is_one_channel(tmp_path):
    g = _gray(3)
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(g > 127).save(tmp_path / "h.png")  # mode "1" counts as grayscale
    pool = load_image_folder(tmp_path)
    assert pool.x.shape == (2, 6, 5, 1)
    np.testing.assert_array_equal(pool.x[0, ..., 0], g.astype(np.float32) / 255)
    np.testing.assert_array_equal(pool.x[1, ..., 0], (g > 127).astype(np.float32))
    assert load_image_folder(tmp_path, grayscale=False).x.shape == (2, 6, 5, 3)


def test_image_folder_mixed_sizes_need_size(tmp_path):
    Image.fromarray(_rgb(0, 6, 5)).save(tmp_path / "one.png")
    Image.fromarray(_rgb(1, 6, 5)).save(tmp_path / "three.png")
    Image.fromarray(_rgb(2, 9, 4)).save(tmp_path / "two.png")
    with pytest.raises(PoolError, match=r"one\.png is 6x5.*two\.png is 9x4.*size=\(H, W\)"):
        load_image_folder(tmp_path)
    pool = load_image_folder(tmp_path, size=(8, 8))
    assert pool.x.shape == (3, 8, 8, 3)
    want = np.asarray(Image.fromarray(_rgb(2, 9, 4)).resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_array_equal(pool.x[2], want)
    with pytest.raises(PoolError, match="size must be"):
        load_image_folder(tmp_path, size=8)


def test_image_folder_labels_from_subfolders(tmp_path):
    for rel in ("dog/x.png", "cat/y.png", "cat/deep/z.png", "loose.png", "dog/w.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(len(rel))).save(tmp_path / rel)
    pool = load_image_folder(tmp_path, labels_from_subfolders=True)
    assert pool.files == ("cat/deep/z.png", "cat/y.png", "dog/w.png", "dog/x.png", "loose.png")
    assert pool.classes == ("cat", "dog")
    assert pool.labels == {0: 0, 1: 0, 2: 1, 3: 1}  # loose.png stays unlabeled
    assert load_image_folder(tmp_path).labels == {}


def test_image_folder_errors(tmp_path):
    with pytest.raises(PoolError, match="nowhere.*no such directory"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(PoolError, match=r"empty.*no images.*\.png, \.jpg, \.jpeg"):
        load_image_folder(tmp_path / "empty")
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(root / "good.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(PoolError, match=r"imgs.*sub/broken\.jpg"):
        load_image_folder(root)
    # a valid header with truncated pixel data fails at decoding, still naming the file
    data = (root / "good.png").read_bytes()
    (root / "sub" / "broken.jpg").unlink()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(PoolError, match=r"cut\.png"):
        load_image_folder(root)


# ---------------------------------------------------------------------------- TFDS


def test_tfds_mock_pool_is_unlabeled(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        pool = load_tfds("mnist", split="train")
        raw = tfds.data_source("mnist", split="train")
        images = np.stack([np.asarray(raw[i]["image"]) for i in range(len(raw))])
        short = load_pool("tfds:mnist:train", max_rows=3)
    assert images.dtype == np.uint8
    assert pool.x.shape == (7, 28, 28, 1) and pool.x.dtype == np.float32
    np.testing.assert_allclose(pool.x, images / 255.0, rtol=1e-6)
    assert pool.labels == {} and pool.files is None and pool.source == "tfds:mnist:train"
    assert pool.classes == tuple(str(i) for i in range(10))
    assert short.x.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(short.x, pool.x[:3])


def test_tfds_feature_choice_and_errors(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(PoolError, match="tfds:mnist:train.*no feature 'pixels'.*image"):
            load_tfds("mnist", image_key="pixels")
        with pytest.raises(PoolError, match="'label' is the label"):
            load_tfds("mnist", image_key="label")
        with pytest.raises(PoolError, match="max_rows"):
            load_tfds("mnist", max_rows=0)
    with pytest.raises(PoolError, match=f"tfds:mnist:train.*{re.escape(str(tmp_path))}.*prepare it"):
        load_tfds("mnist", data_dir=str(tmp_path))


def test_tfds_missing_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(PoolError, match=r"jaxal\[tfds\]"):
        load_pool("tfds:mnist")


# ---------------------------------------------------------------------------- dispatch


def test_load_pool_dispatch_and_errors(tmp_path, monkeypatch):
    npz = _npz(tmp_path, "data.NPZ", x=np.ones((2, 3)), y=np.array([0, 5]))
    assert load_pool(npz).labels == {0: 0, 1: 5}
    with pytest.raises(PoolError, match="below 3"):
        load_pool(str(npz), num_classes=3)  # options reach the loader
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(_gray(0)).save(folder / "a.png")
    assert load_pool(folder).files == ("a.png",)
    assert load_pool(str(folder), size=(3, 3)).x.shape == (1, 3, 3, 1)

    seen = []

    def fake_tfds(name, *, split="train", data_dir=None, image_key=None, max_rows=None):
        seen.append((name, split, max_rows))
        return "pool"

    monkeypatch.setattr("jaxal.labeling.pools.load_tfds", fake_tfds)
    assert load_pool("tfds:cifar10") == "pool" and load_pool("tfds:mnist:test[:10]", max_rows=4) == "pool"
    assert load_pool("tfds:mnist", split="test") == "pool"
    assert seen == [("cifar10", "train", None), ("mnist", "test[:10]", 4), ("mnist", "test", None)]

    with pytest.raises(PoolError, match="tfds:mnist:test.*split='test'.*split='train'"):
        load_pool("tfds:mnist:test", split="train")
    with pytest.raises(PoolError, match="expected tfds:NAME"):
        load_pool("tfds:")
    with pytest.raises(PoolError, match=r"folder.*unknown option\(s\) num_classes for an image folder"):
        load_pool(folder, num_classes=3)
    with pytest.raises(PoolError, match=r"unknown option\(s\) colour, size for a .npz"):
        load_pool(npz, size=(2, 2), colour=True)
    with pytest.raises(PoolError, match=r"unknown option\(s\) grayscale for a TFDS"):
        load_pool("tfds:mnist", grayscale=True)
    text = tmp_path / "pool.csv"
    text.write_text("1,2,3")
    for bad in (text, tmp_path / "absent"):
        with pytest.raises(PoolError, match=re.escape(str(bad)) + ".*folder of images.*npz.*tfds:NAME:SPLIT"):
            load_pool(bad)
    with pytest.raises(PoolError, match="path or a string"):
        load_pool(3)
