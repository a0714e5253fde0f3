"""Data sets as numpy arrays, initial labeled sets and candidate subsamples.

Every loader returns a :class:`Dataset` of numpy arrays: ``x`` float32 ``[n, ...]``,
``y`` int32 ``[n]``. Normalisation uses training statistics only:

- ``digits`` (scikit-learn, 1,797 8x8 images, no download): pixels scaled to [0, 1]
  and standardised per feature -> ``[n, 64]``; a seeded stratified 75/25 split.
- ``mnist1d`` (built offline by the ``mnist1d`` package with its default arguments;
  option ``num_samples``) -> ``[n, 40]``, standardised per feature; its own split.
- TFDS ``mnist``, ``fashion_mnist``, ``svhn_cropped``, ``cifar10``, ``cifar100``
  through ``tfds.data_source`` (ArrayRecord, no TensorFlow): images -> ``[n, H, W,
  C]`` scaled to [0, 1] and standardised per channel; options ``max_train`` /
  ``max_test`` keep the first records; ``data_dir`` points TFDS at its files.
- a local ``*.npz`` holding ``x_train, y_train, x_test, y_test`` (used as stored);
  float targets with fractional values (or option ``task="regression"``) make it a
  regression set, targets standardised with the training mean and std.
- regression sets (``task="regression"``, float32 targets ``[n]`` standardised with
  the training statistics, ``num_classes`` = 1 output): ``diabetes``, ``friedman1``,
  ``friedman2``, ``friedman3``, ``digits_angle`` (:mod:`jaxal.data_regression`).

Redundant copies (any data set): options ``copies=c`` and ``copy_noise=s`` make a
redundancy-prone pool, as in real collections holding near-duplicates. The training
set becomes ``c`` blocks of ``n`` rows: block 0 is the original, and block ``j ≥ 1``
repeats it plus Gaussian noise of standard deviation ``s`` times each feature's
training std (row ``j·n + i`` is a copy of example ``i``, same label). The noise is
drawn from the data set seed; the test set is untouched.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from jaxal import data_regression
from jaxal.ops.random import host_permutation, split
from jaxal.validation import check_choice, check_finite, check_label_values, check_labels, check_nonempty, check_same_length

__all__ = ["Dataset", "names", "load", "with_copies", "initial_indices", "subsample", "TFDS_NUM_CLASSES", "TASKS",
           "regression_dataset"]

TASKS = ("classification", "regression")

TFDS_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "svhn_cropped": 10, "cifar10": 10, "cifar100": 100}


class Dataset(NamedTuple):
    """A labeled data set with a train/test split.

    Attributes:
      name: the name it was loaded by.
      x_train: float32 ``[n, ...]``.
      y_train: int32 ``[n]`` in ``[0, num_classes)`` (classification), or float32
        ``[n]`` / ``[n, D]`` targets (regression).
      x_test: float32 ``[m, ...]``.
      y_test: like ``y_train``.
      num_classes: ``C`` classes, or ``D`` real outputs for regression.
      task: ``"classification"`` or ``"regression"``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    task: str = "classification"


def _standardise(x_train: np.ndarray, x_test: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the training mean and divide by the training std over ``axes``
    (constant features are only centred)."""
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _finish(name: str, x_train, y_train, x_test, y_test, num_classes: int | None = None) -> Dataset:
    """Cast, validate and pack.

    ``num_classes=None`` infers ``C = max(label) + 1`` and refuses labels that make that
    guess doubtful (a class in ``[0, C)`` with no training example, a test label the
    training set never shows): pass ``num_classes`` to confirm ``C``.
    """
    x_train, x_test = _checked_inputs(x_train, y_train, x_test, y_test)
    y_train = check_label_values("y_train", y_train)
    y_test = check_label_values("y_test", y_test)
    if num_classes is None:
        num_classes = _infer_num_classes(y_train, y_test)
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    check_labels("y_train", y_train, num_classes)
    check_labels("y_test", y_test, num_classes)
    return Dataset(name, x_train, np.asarray(y_train).astype(np.int32), x_test, np.asarray(y_test).astype(np.int32),
                   int(num_classes))


def regression_dataset(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                       standardise_targets: bool = True) -> Dataset:
    """A regression :class:`Dataset` from arrays: float32 inputs as given, targets
    ``[n]`` or ``[n, D]`` (standardised with the training mean and std unless
    ``standardise_targets=False``), ``num_classes = D``, ``task="regression"``."""
    x_train, x_test = _checked_inputs(x_train, y_train, x_test, y_test)
    ys = []
    for n, y in (("y_train", y_train), ("y_test", y_test)):
        a = np.asarray(y)
        if a.dtype.kind not in "fiub" or a.ndim not in (1, 2):
            raise ValueError(f"{n} must be real-valued regression targets [n] or [n, D], got {a.dtype} {a.shape}")
        check_finite(n, a)
        ys.append(a.astype(np.float64))
    y_tr, y_te = ys
    if y_tr.shape[1:] != y_te.shape[1:]:
        raise ValueError(f"y_train targets {y_tr.shape[1:]} and y_test targets {y_te.shape[1:]} differ in shape")
    if standardise_targets:
        mean, std = y_tr.mean(axis=0), y_tr.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
    outputs = 1 if y_tr.ndim == 1 else int(y_tr.shape[1])
    return Dataset(name, x_train, y_tr.astype(np.float32), x_test, y_te.astype(np.float32), outputs, "regression")


def _checked_inputs(x_train, y_train, x_test, y_test) -> tuple[np.ndarray, np.ndarray]:
    """Inputs as float32 after the checks every data set needs (numbers, non-empty,
    matching lengths and example shapes, finite)."""
    for n, a in (("x_train", x_train), ("x_test", x_test)):
        if np.asarray(a).dtype.kind in "USOV":
            raise ValueError(f"{n} holds {np.asarray(a).dtype} values: inputs must be numbers")
    x_train = np.asarray(x_train, dtype=np.float32)
    x_test = np.asarray(x_test, dtype=np.float32)
    check_nonempty("x_train", x_train)
    if np.ndim(x_test) == 0 or np.shape(x_test)[0] == 0:
        raise ValueError("x_test is empty: a run measures test accuracy every round, so it needs test examples")
    check_same_length(x_train=x_train, y_train=y_train)
    check_same_length(x_test=x_test, y_test=y_test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"x_train examples {x_train.shape[1:]} and x_test examples {x_test.shape[1:]} differ in shape")
    check_finite("x_train", x_train)
    check_finite("x_test", x_test)
    return x_train, x_test


def _infer_num_classes(y_train: np.ndarray, y_test: np.ndarray) -> int:
    """``max(label) + 1``, when every class up to it has a training example and every
    test label occurs in training; otherwise a ``ValueError`` that says what was
    inferred and how to confirm or fix it."""
    c = int(max(np.max(y_train, initial=0), np.max(y_test, initial=0))) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if np.min(y, initial=0) < 0:
            raise ValueError(f"{name} has labels outside [0, C): min {np.min(y)}; labels must be 0..C-1")
    seen = np.zeros(c, bool)
    seen[y_train.astype(np.int64)] = True
    unseen_test = sorted(set(np.unique(y_test).astype(int).tolist()) - set(np.flatnonzero(seen).tolist()))
    if unseen_test:
        raise ValueError(
            f"y_test holds label(s) {unseen_test} that never occur in y_train: no model trained on y_train can "
            "predict them. Drop those test examples, or pass num_classes (CLI: --dataset-option num_classes=C) "
            "to keep them"
        )
    empty = np.flatnonzero(~seen).tolist()
    if empty:
        raise ValueError(
            f"num_classes was inferred as {c} (largest label {c - 1} + 1), but class(es) {empty[:10]}"
            f"{' ...' if len(empty) > 10 else ''} have no example: labels must be 0..C-1. If {c} classes is what "
            f"you mean, pass num_classes={c} (CLI: --dataset-option num_classes={c}); otherwise renumber the labels "
            "(np.unique(y, return_inverse=True))"
        )
    return c


def _load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = d.data.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=test_fraction, stratify=d.target, random_state=int(seed)
    )
    x_tr, x_te = _standardise(x_tr, x_te, axes=(0,))
    return _finish("digits", x_tr, y_tr, x_te, y_te, 10)


def _load_mnist1d(seed: int = 0, num_samples: int | None = None) -> Dataset:
    """MNIST-1D with the package's default arguments (its own seed 42: the canonical
    data set); ``num_samples`` changes the total size (80/20 split)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
            raise ValueError(f"num_samples must be an integer >= 10, got {num_samples!r}")
        args.num_samples = num_samples
    d = make_dataset(args)
    x_tr, x_te = _standardise(np.asarray(d["x"], np.float32), np.asarray(d["x_test"], np.float32), axes=(0,))
    return _finish("mnist1d", x_tr, d["y"], x_te, d["y_test"], 10)


def _read_records(source: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``image`` and ``label`` of the first ``limit`` records of a TFDS data source."""
    n = len(source)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_train/max_test must be a positive integer, got {limit!r}")
        n = min(n, limit)
    images, labels = [], []
    chunk = 4096
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        try:  # ArrayRecord reads a list of keys in one call
            records = source.__getitems__(keys)
        except (AttributeError, TypeError):  # sources without batched reads
            records = [source[i] for i in keys]
        for r in records:
            images.append(np.asarray(r["image"]))
            labels.append(int(r["label"]))
    if not images:
        raise ValueError("the TFDS split holds no records")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _images_to_float(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return x / 255.0


def _load_tfds(name: str, seed: int = 0, data_dir: str | None = None, max_train: int | None = None,
               max_test: int | None = None, download: bool = True) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # an optional dependency: say how to get it
        raise ImportError(
            f"data set {name!r} is read through tensorflow-datasets, which is not installed ({e}); "
            "install it with: pip install 'jaxal[tfds]'"
        ) from None

    def not_prepared(why: str) -> ValueError:
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
        return ValueError(
            f"data set {name!r} is not prepared in {where} and {why}. Prepare it on a machine with internet "
            f"access: python -c \"import tensorflow_datasets as tfds; tfds.data_source('{name}', data_dir='DIR')\", "
            "then copy DIR here and pass --data-dir DIR"
        )

    def reason(e: Exception) -> str:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else '-'}"

    try:  # prepared files first: no network touched
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except Exception as e:
        if not download:
            raise not_prepared(f"could not be read (download=False; {reason(e)})") from None
        if not _online():  # tensorflow-datasets would retry for minutes before giving up
            raise not_prepared(f"this machine has no network to download it ({_DOWNLOAD_HOST} is unreachable)") \
                from None
        try:
            sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=True)
        except Exception as e2:
            raise not_prepared(f"could not be downloaded ({reason(e2)})") from None
    x_tr, y_tr = _read_records(sources[0], max_train)
    x_te, y_te = _read_records(sources[1], max_test)
    x_tr, x_te = _standardise(_images_to_float(x_tr), _images_to_float(x_te), axes=(0, 1, 2))
    return _finish(name, x_tr, y_tr, x_te, y_te, TFDS_NUM_CLASSES[name])


_DOWNLOAD_HOST = "storage.googleapis.com"  # where tensorflow-datasets fetches its files and metadata


def _online(host: str = _DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_npz(path: str, num_classes: int | None = None, task: str | None = None) -> Dataset:
    if not os.path.exists(path):
        raise ValueError(f"no such .npz file: {path}")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK"):  # an .npz is a zip archive
        what = "a single .npy array" if head.startswith(b"\x93NUMPY") else f"not a zip archive (starts with {head!r})"
        raise ValueError(
            f"{path} is not a NumPy .npz archive: it is {what}. Write one with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    with np.load(path, allow_pickle=False) as f:
        required = ("x_train", "y_train", "x_test", "y_test")
        missing = [k for k in required if k not in f.files]
        if missing:
            raise ValueError(f"{path} is missing array(s) {', '.join(missing)}; it has {', '.join(f.files) or 'none'}")
        try:
            arrays = {k: np.asarray(f[k]) for k in required}
        except ValueError as e:  # object arrays need pickles, which are never loaded
            raise ValueError(f"{path}: {e}; save plain numeric arrays (labels as integers 0..C-1)") from None
    if task is not None:
        check_choice("task", task, TASKS)
    else:  # fractional float targets cannot be class labels
        y = np.concatenate([np.ravel(arrays["y_train"]), np.ravel(arrays["y_test"])])
        fractional = y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.any(y != np.round(y))
        task = "regression" if fractional else "classification"
    if task == "regression":
        if num_classes is not None:
            raise ValueError("num_classes is for classification; a regression set has as many outputs as its "
                             "targets have columns")
        return regression_dataset(os.path.basename(path), *(arrays[k] for k in required))
    return _finish(os.path.basename(path), arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   num_classes)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    **{name: (lambda name: lambda **kw: _load_tfds(name, **kw))(name) for name in TFDS_NUM_CLASSES},
    **data_regression.LOADERS,
}


_TAG_COPIES = 0x636F_7079  # folds the data set seed into the copies' noise key


def _check_copies(copies: Any, copy_noise: Any) -> tuple[int, float]:
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ValueError(f"copies must be a positive integer, got {copies!r}")
    if isinstance(copy_noise, bool) or not isinstance(copy_noise, (int, float)) or not np.isfinite(copy_noise) \
            or copy_noise < 0:
        raise ValueError(f"copy_noise must be a finite number >= 0, got {copy_noise!r}")
    if copies == 1 and copy_noise:
        raise ValueError(f"copy_noise={copy_noise} needs copies >= 2")
    return int(copies), float(copy_noise)


def with_copies(ds: Dataset, copies: int, copy_noise: float, key: jax.Array) -> Dataset:
    """``ds`` with its training set repeated ``copies`` times, noisy after the first
    block (see the module docstring); ``key`` draws the noise."""
    copies, copy_noise = _check_copies(copies, copy_noise)
    if copies == 1:
        return ds
    x = ds.x_train
    std = x.std(axis=0, dtype=np.float64).astype(np.float32)
    blocks = [x]
    for k in jax.random.split(key, copies - 1):
        noise = np.asarray(jax.random.normal(k, x.shape, dtype=np.float32))
        blocks.append((x + np.float32(copy_noise) * std * noise).astype(np.float32))
    return ds._replace(x_train=np.concatenate(blocks), y_train=np.tile(ds.y_train, copies))


# Loaders whose data do not depend on ``seed`` (mnist1d builds its canonical set).
_SEEDLESS = frozenset({"mnist1d"})


def load_key(name: str, *, seed: int = 0, data_dir: str | None = None, **options: Any) -> tuple | None:
    """What decides the arrays :func:`load` returns, as a hashable key (``None`` when an
    option cannot be hashed): equal keys, equal data. Lets a caller that runs many
    experiments keep one copy per data set (see ``jaxal.experiment.loop.run``'s
    ``datasets``); the seed is left out for sets that do not use it, and a ``.npz``
    file's modification time is put in."""
    stamp = os.stat(name).st_mtime_ns if str(name).endswith(".npz") and os.path.exists(name) else None
    key = (name, None if name in _SEEDLESS else int(seed), data_dir, stamp, tuple(sorted(options.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def names() -> list[str]:
    """Names :func:`load` knows (a path ending in ``.npz`` works too)."""
    return sorted(_LOADERS)


def load(name: str, *, seed: int = 0, data_dir: str | None = None, **options: Any) -> Dataset:
    """Load a data set by name (see the module docstring) or from a ``.npz`` path.

    Args:
      name: one of :func:`names`, or a path ending in ``.npz``.
      seed: seeds the train/test split of sets without one (``digits``).
      data_dir: TFDS data directory (TFDS sets only).
      **options: ``num_samples`` (mnist1d), ``max_train``/``max_test``/``download``
        (TFDS), ``test_fraction`` (digits), ``num_classes`` (npz); for every data set
        ``copies`` (default 1) and ``copy_noise`` (default 0.0): redundant noisy copies
        of the training set (see the module docstring).
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    copies = options.pop("copies", 1)
    copy_noise = options.pop("copy_noise", 0.0)
    _check_copies(copies, copy_noise)  # before the (possibly slow) load
    ds = _load(name, seed, data_dir, options)
    if copies == 1:  # no noise to draw (and no key to make)
        return ds
    return with_copies(ds, copies, copy_noise, jax.random.fold_in(jax.random.key(int(seed)), _TAG_COPIES))


def _load(name: str, seed: int, data_dir: str | None, options: dict) -> Dataset:
    if name.endswith(".npz"):
        loader, args = _load_npz, {}
    elif name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(names())}, or a path ending in .npz")
    elif name in TFDS_NUM_CLASSES:
        loader, args = _load_tfds, {"name": name, "seed": seed, "data_dir": data_dir}
    else:
        loader, args = _LOADERS[name], {"seed": seed}
    if name in data_regression.LOADERS:
        _check_loader_options(name, loader, options)
        x_tr, y_tr, x_te, y_te = loader(seed=seed, **options)
        axes = (0,) if np.ndim(x_tr) == 2 else (0, 1, 2)
        x_tr, x_te = _standardise(np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32), axes=axes)
        return regression_dataset(name, x_tr, y_tr, x_te, y_te)
    _check_loader_options(name, loader, options)
    return loader(name, **options) if loader is _load_npz else loader(**args, **options)


def _check_loader_options(name: str, loader: Callable[..., Any], options: dict) -> None:
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("name", "seed", "data_dir", "path")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(accepted + ['copies', 'copy_noise'])}")


def _check_size(size: Any, n: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if size > n:
        raise ValueError(f"size={size} is larger than the {n} examples available")
    return int(size)


def initial_indices(key: jax.Array, y: Any, size: int, *, balanced: bool = False,
                    num_classes: int | None = None) -> np.ndarray:
    """Indices (sorted, int64) of an initial labeled set of ``size`` examples.

    ``balanced=False``: uniform without replacement. ``balanced=True``: ``size / C``
    examples of each class (the CRC paper's initial set), which needs ``size``
    divisible by ``C`` and every class to have that many examples. ``C`` is
    ``num_classes`` or ``max(y) + 1``.
    """
    y = np.asarray(y)
    if y.ndim == 0 or y.size == 0 or (y.ndim != 1 and not balanced):
        raise ValueError(f"y must be non-empty labels [n] or regression targets [n, D], got shape {y.shape}")
    size = _check_size(size, y.shape[0])
    if balanced and y.dtype.kind == "f" and np.any(y != np.round(y)):
        raise ValueError("a balanced initial set needs class labels; these are real-valued regression targets "
                         "(use balanced=False)")
    if not balanced:
        return np.sort(host_permutation(key, y.shape[0])[:size]).astype(np.int64)
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    check_labels("y", y, c)
    if size % c != 0:
        raise ValueError(f"a balanced initial set needs size divisible by the {c} classes, got size={size}")
    per_class = size // c
    chosen = []
    for cls, k in zip(range(c), split(key, c)):
        members = np.flatnonzero(y == cls)
        if members.size < per_class:
            raise ValueError(f"class {cls} has {members.size} examples, fewer than the {per_class} a balanced set needs")
        chosen.append(members[host_permutation(k, members.size)[:per_class]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def subsample(key: jax.Array, indices: Sequence[int] | np.ndarray, size: int | None) -> np.ndarray:
    """A uniform random subset (sorted) of ``size`` of ``indices``: the candidates one
    round scores. All of ``indices`` when ``size`` is None or >= their number."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if size is None or (not isinstance(size, bool) and isinstance(size, (int, np.integer)) and size >= idx.size):
        return idx.copy()
    size = _check_size(size, idx.size)
    pick = host_permutation(key, idx.size)[:size]
    return np.sort(idx[pick])
