"""Load an unlabeled pool that a user wants to label: a ``.npz``, a folder of images, a TFDS split.

Every loader returns an :class:`UnlabeledPool`: float32 inputs with one row per example,
the labels already known (often none) and, when the source knows them, the class names.
A labeling session is created from it, so the row order is part of the contract: it is
the order of ``x`` in a ``.npz``, the sorted relative paths of an image folder, and the
record order of a TFDS split.

Everything that can go wrong with a user's data raises :class:`PoolError`, one message
that names the source and what is wrong with it, so a command line can print it as is.
No JAX here: loading a pool is host work and must not grab an accelerator.
"""

from __future__ import annotations

import collections
import inspect
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "PoolError",
    "UnlabeledPool",
    "load_image_folder",
    "load_npz",
    "load_pool",
    "load_tfds",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File endings read from an image folder (compared case-insensitively)."""


class PoolError(ValueError):
    """A pool that cannot be loaded; the message names the source and what is wrong."""


class UnlabeledPool(NamedTuple):
    """The inputs to label, with whatever labels and class names the source already holds."""

    x: np.ndarray  # [N, ...] float32 inputs (images: [N, H, W, C] scaled to [0, 1])
    files: tuple[str, ...] | None  # row i's file, relative to the folder (image folders), else None
    labels: dict[int, int]  # labels already known: row -> class (may be empty)
    classes: tuple[str, ...] | None  # class names when the source knows them, else None
    source: str  # what it was loaded from, for messages and the session's record


# ---------------------------------------------------------------------------- shared checks


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _preview(values: Any, limit: int = 5) -> str:
    """The first few of ``values`` as text, with an ellipsis when there are more."""
    values = [str(v) for v in values]
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line error of our own."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else "-"


def _positive_int(value: Any, name: str, where: str) -> int:
    """``value`` as an int, or a PoolError when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PoolError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _to_float32(x: np.ndarray, where: str, name: str = "x", scale_uint8: bool = False) -> np.ndarray:
    """Numeric ``[N, ...]`` inputs as float32 (uint8 / 255 if asked), refusing what a model cannot train on."""
    if x.dtype.kind not in "biuf":
        raise PoolError(f"{where}: {name} must be numeric, but its dtype is {x.dtype}")
    if x.ndim == 0:
        raise PoolError(f"{where}: {name} is a single value (0-dim); it must be [N, ...] with one row per example")
    if x.shape[0] == 0 or x.size == 0:
        raise PoolError(f"{where}: {name} is empty (shape {x.shape}); it must hold at least one example")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(x, dtype=np.float32)
    if scale_uint8 and x.dtype == np.uint8:
        out /= np.float32(255.0)
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise PoolError(
            f"{where}: {name} has non-finite values (NaN or inf as float32) in {_plural(len(rows), 'row')} "
            f"of {len(out)} (rows {_preview(rows)}); clean or drop them first"
        )
    return out


# ---------------------------------------------------------------------------- .npz


_NPZ_KEYS = ("x", "y", "classes", "labeled_index", "labeled_y")


def _read_npz(where: str) -> dict[str, np.ndarray]:
    """The arrays of ``where`` this module uses, read eagerly (pickles are never loaded)."""
    if not os.path.isfile(where):
        what = "a directory" if os.path.isdir(where) else "no such file"
        raise PoolError(f"{where}: cannot load a .npz pool: {what}")
    try:
        archive = np.load(where, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PoolError(f"{where}: not a readable NumPy .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PoolError(f"{where}: holds a single .npy array, not an .npz archive; write one with np.savez(path, x=...)")
    with archive:
        arrays = {}
        for key in _NPZ_KEYS:
            if key not in archive.files:
                continue
            try:
                arrays[key] = np.asarray(archive[key])
            except ValueError as e:  # object arrays would need a pickle
                raise PoolError(
                    f"{where}: array {key!r} cannot be read without unpickling ({e}); save plain numeric "
                    "arrays, and class names as np.array([...], dtype=str)"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise PoolError(f"{where}: array {key!r} is damaged ({type(e).__name__}: {e})") from None
        if "x" not in arrays:
            held = ", ".join(archive.files) or "no arrays at all"
            raise PoolError(f"{where}: has no array 'x' (the inputs to label); it holds {held}")
    return arrays


def _int_labels(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """``values`` as int64, accepting floats only when every value is a whole number."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        whole = finite & (np.mod(np.where(finite, values, 0), 1) == 0)
        if whole.all():
            return values.astype(np.int64)
        rows = np.flatnonzero(~whole)
        raise PoolError(
            f"{where}: {name} has non-integer values at {_plural(len(rows), 'position')} ({_preview(rows)}); "
            "labels are class indices 0..C-1, and -1 marks an unknown label"
        )
    raise PoolError(f"{where}: {name} must hold integer class indices, but its dtype is {values.dtype}")


def _check_vector(values: np.ndarray, name: str, length: int | None, where: str) -> None:
    if values.ndim != 1 or (length is not None and len(values) != length):
        want = f"({length},), one per row of x" if length is not None else "1-D"
        raise PoolError(f"{where}: {name} has shape {values.shape}; expected {want}")


def _labels_from_y(y: np.ndarray, n: int, where: str) -> dict[int, int]:
    _check_vector(y, "y", n, where)
    y = _int_labels(y, "y", where)
    rows = np.flatnonzero(y >= 0)
    return {int(i): int(y[i]) for i in rows}


def _labels_from_pairs(arrays: Mapping[str, np.ndarray], n: int, where: str) -> dict[int, int]:
    if "labeled_index" not in arrays or "labeled_y" not in arrays:
        missing = "labeled_y" if "labeled_index" in arrays else "labeled_index"
        raise PoolError(f"{where}: labeled_index and labeled_y go together, but {missing} is missing")
    index, y = arrays["labeled_index"], arrays["labeled_y"]
    _check_vector(index, "labeled_index", None, where)
    _check_vector(y, "labeled_y", len(index), where)
    if index.dtype.kind not in "iu":
        raise PoolError(f"{where}: labeled_index must hold integer row numbers, but its dtype is {index.dtype}")
    index, y = index.astype(np.int64), _int_labels(y, "labeled_y", where)
    outside = index[(index < 0) | (index >= n)]
    if outside.size:
        raise PoolError(f"{where}: labeled_index has rows outside 0..{n - 1}: {_preview(outside)}")
    counts = collections.Counter(index.tolist())
    repeated = sorted(i for i, c in counts.items() if c > 1)
    if repeated:
        raise PoolError(f"{where}: labeled_index repeats rows {_preview(repeated)}; give each row one label")
    return {int(i): int(c) for i, c in zip(index, y) if c >= 0}


def _npz_labels(arrays: Mapping[str, np.ndarray], n: int, where: str) -> dict[int, int]:
    """Known labels from ``y`` (negative = unknown) or from ``labeled_index``/``labeled_y``."""
    has_pairs = "labeled_index" in arrays or "labeled_y" in arrays
    if "y" in arrays and has_pairs:
        raise PoolError(f"{where}: holds both y and labeled_index/labeled_y; give the labels one way only")
    if "y" in arrays:
        return _labels_from_y(arrays["y"], n, where)
    return _labels_from_pairs(arrays, n, where) if has_pairs else {}


def _npz_classes(classes: np.ndarray, where: str) -> tuple[str, ...]:
    """Class names from a 1-D string array, refusing duplicates."""
    if classes.dtype.kind not in "US" or classes.ndim != 1 or classes.size == 0:
        raise PoolError(
            f"{where}: classes must be a non-empty 1-D array of strings (np.array([...], dtype=str)), "
            f"got dtype {classes.dtype} and shape {classes.shape}"
        )
    try:
        names = tuple(c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in classes.tolist())
    except UnicodeDecodeError as e:
        raise PoolError(f"{where}: classes are bytes that are not UTF-8 ({e})") from None
    repeated = sorted(c for c, k in collections.Counter(names).items() if k > 1)
    if repeated:
        raise PoolError(f"{where}: classes has duplicate names: {_preview(repr(c) for c in repeated)}")
    return names


def _check_label_range(labels: dict[int, int], limit: int | None, why: str, where: str) -> None:
    if limit is None:
        return
    bad = sorted(row for row, c in labels.items() if c >= limit)
    if bad:
        raise PoolError(
            f"{where}: labels must be below {limit} ({why}), but {_plural(len(bad), 'row')} "
            f"{'has' if len(bad) == 1 else 'have'} more: {_preview(f'row {r} -> {labels[r]}' for r in bad)}"
        )


def load_npz(path: str | os.PathLike, *, num_classes: int | None = None) -> UnlabeledPool:
    """Load the pool in a ``.npz``: inputs ``x``, optional labels and class names.

    ``x`` is ``[N, ...]`` and numeric (cast to float32, never rescaled). Known labels come
    either as ``y`` (``[N]`` integers, negative = unknown) or as ``labeled_index`` with
    ``labeled_y``; ``classes`` (``[C]`` strings) names the classes. When ``num_classes`` or
    ``classes`` is given, every label must be below it.
    """
    where = os.fspath(path)
    if num_classes is not None:
        num_classes = _positive_int(num_classes, "num_classes", where)
    arrays = _read_npz(where)
    x = _to_float32(arrays["x"], where)
    classes = _npz_classes(arrays["classes"], where) if "classes" in arrays else None
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise PoolError(f"{where}: num_classes={num_classes}, but the file names {len(classes)} classes")
    labels = _npz_labels(arrays, len(x), where)
    if num_classes is not None:
        _check_label_range(labels, num_classes, f"num_classes={num_classes}", where)
    elif classes is not None:
        _check_label_range(labels, len(classes), f"the file names {len(classes)} classes", where)
    return UnlabeledPool(x=x, files=None, labels=labels, classes=classes, source=where)


# ---------------------------------------------------------------------------- image folders


def _image_files(root: str) -> list[str]:
    """Relative POSIX paths of every image under ``root``, sorted: the pool's row order."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = os.path.relpath(os.path.join(folder, name), root)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _unreadable(root: str, rel: str, e: Exception) -> PoolError:
    return PoolError(f"{root}: cannot read image {rel} ({type(e).__name__}: {_first_line(e)}); fix or remove it")


def _read_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _headers(root: str, files: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """Mode and ``(H, W)`` of every image, from its header (no pixels decoded yet)."""
    from PIL import Image

    out = []
    for rel in files:
        try:
            with Image.open(os.path.join(root, rel)) as im:
                out.append((im.mode, (im.height, im.width)))
        except _read_errors() as e:
            raise _unreadable(root, rel, e) from None
    return out


def _common_size(root: str, files: list[str], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one size every image has, or a PoolError naming two files that differ."""
    most, _ = collections.Counter(sizes).most_common(1)[0]
    other = next((i for i, s in enumerate(sizes) if s != most), None)
    if other is None:
        return most
    first = sizes.index(most)
    (h1, w1), (h2, w2) = most, sizes[other]
    raise PoolError(
        f"{root}: images differ in size: {files[first]} is {h1}x{w1} (HxW) but {files[other]} is {h2}x{w2}; "
        f"pass size=(H, W) to resize every image, e.g. size=({h1}, {w1})"
    )


def _decode(root: str, rel: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as ``[H, W, C]`` float32 in [0, 1], converted to ``mode`` and resized to ``size``."""
    from PIL import Image

    try:
        with Image.open(os.path.join(root, rel)) as im:
            im = im.convert(mode)
            if (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.float32)
    except _read_errors() as e:
        raise _unreadable(root, rel, e) from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels / np.float32(255.0)


def _check_size(size: Any, root: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise PoolError(f"{root}: size must be (height, width), got {size!r}")
    return _positive_int(size[0], "size[0] (height)", root), _positive_int(size[1], "size[1] (width)", root)


def _subfolder_labels(root: str, files: list[str]) -> tuple[dict[int, int], tuple[str, ...]]:
    """Labels named by each file's first directory level; files in ``root`` itself stay unlabeled."""
    top = [rel.split("/", 1)[0] if "/" in rel else None for rel in files]
    classes = tuple(sorted({t for t in top if t is not None}))
    if not classes:
        raise PoolError(
            f"{root}: labels_from_subfolders=True, but no image lies in a subfolder; expected "
            f"{root}/CLASS_NAME/IMAGE (files directly in the folder stay unlabeled)"
        )
    index = {name: c for c, name in enumerate(classes)}
    return {i: index[t] for i, t in enumerate(top) if t is not None}, classes


def load_image_folder(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    grayscale: bool | None = None,
    labels_from_subfolders: bool = False,
) -> UnlabeledPool:
    """Load every ``.png``/``.jpg``/``.jpeg`` under a folder as ``[N, H, W, C]`` float32 in [0, 1].

    Rows follow the sorted relative paths (``files``). Images are converted to RGB, or to
    grayscale (C = 1) when ``grayscale=True`` or, with ``grayscale=None``, when every image
    already is. They must share one size unless ``size=(H, W)`` resizes them (bilinear).
    With ``labels_from_subfolders=True``, ``ROOT/CLASS/...`` names the label of each image.
    """
    root = os.fspath(path)
    if not os.path.isdir(root):
        what = "a file" if os.path.exists(root) else "no such directory"
        raise PoolError(f"{root}: cannot load an image folder: {what}")
    size = _check_size(size, root)
    if grayscale is not None and not isinstance(grayscale, bool):
        raise PoolError(f"{root}: grayscale must be True, False or None, got {grayscale!r}")
    files = _image_files(root)
    if not files:
        raise PoolError(f"{root}: no images found (read: {', '.join(IMAGE_EXTENSIONS)} in any letter case, "
                        "in the folder and all its subfolders)")
    headers = _headers(root, files)
    if grayscale is None:
        grayscale = all(mode in ("L", "1") for mode, _ in headers)
    mode = "L" if grayscale else "RGB"
    size = size or _common_size(root, files, [s for _, s in headers])
    x = np.empty((len(files), size[0], size[1], 1 if grayscale else 3), np.float32)
    for i, rel in enumerate(files):
        x[i] = _decode(root, rel, mode, size)
    labels, classes = _subfolder_labels(root, files) if labels_from_subfolders else ({}, None)
    return UnlabeledPool(x=x, files=tuple(files), labels=labels, classes=classes, source=root)


# ---------------------------------------------------------------------------- TFDS


def _import_tfds(where: str) -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # an optional dependency: say how to get it
        raise PoolError(
            f"{where}: reading TFDS needs tensorflow-datasets, which is not installed ({e}); "
            "install it with: pip install 'jaxal[tfds]'"
        ) from None
    return tfds


def _open_tfds(tfds: Any, name: str, split: str, data_dir: str | None, where: str) -> Any:
    """The split's random-access source from prepared files only (never a download)."""
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
        reason = _first_line(e).removesuffix("Possible root causes:").strip() or "-"
        if type(e).__name__ == "DatasetNotFoundError":
            raise PoolError(f"{where}: TFDS has no data set named {name!r} ({reason})") from None
        home = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
        raise PoolError(
            f"{where}: could not read the prepared data in {home} ({type(e).__name__}: {reason}). If it is not "
            "prepared, prepare it on a machine with internet access: python -c \"import tensorflow_datasets as "
            f"tfds; tfds.data_source('{name}', data_dir='DIR')\", then copy DIR here and pass data_dir=DIR"
        ) from None


def _tfds_features(source: Any) -> Mapping[str, Any]:
    """The data set's top-level features, or an empty mapping when the source does not say."""
    try:
        features = source.dataset_info.features
        return {k: features[k] for k in features}
    except Exception:
        return {}


def _label_keys(features: Mapping[str, Any]) -> set[str]:
    """Features that hold labels (``label`` and every class-label feature): never read as inputs."""
    return {"label"} | {k for k, f in features.items() if type(f).__name__ == "ClassLabel"}


def _describe(record: Mapping[str, Any]) -> str:
    parts = []
    for k, v in record.items():
        a = np.asarray(v) if not isinstance(v, Mapping) else None
        parts.append(f"{k} ({a.dtype} {a.shape})" if a is not None else f"{k} (nested)")
    return ", ".join(parts)


def _input_key(record: Mapping[str, Any], hidden: set[str], image_key: str | None, where: str) -> str:
    """The feature holding the inputs: ``image_key``, else ``image``, else the only numeric array."""
    def numeric(k: str) -> bool:
        v = record[k]
        return not isinstance(v, Mapping) and np.asarray(v).dtype.kind in "biuf"

    if image_key is not None:
        if image_key not in record:
            raise PoolError(f"{where}: no feature {image_key!r}; the records hold {_describe(record)}")
        if image_key in hidden:
            raise PoolError(f"{where}: feature {image_key!r} is the label, which an unlabeled pool does not read")
        if not numeric(image_key):
            raise PoolError(f"{where}: feature {image_key!r} is not numeric; the records hold {_describe(record)}")
        return image_key
    if "image" in record and "image" not in hidden and numeric("image"):
        return "image"
    arrays = [k for k in record if k not in hidden and numeric(k) and np.ndim(record[k]) >= 1]
    if len(arrays) == 1:
        return arrays[0]
    raise PoolError(
        f"{where}: cannot tell which feature holds the inputs (no 'image', and {len(arrays)} other numeric "
        f"array features); pass image_key=NAME, one of: {_describe(record)}"
    )


def _read_feature(source: Any, key: str, n: int, where: str) -> np.ndarray:
    """Stack feature ``key`` of the first ``n`` records (batched reads where the source has them)."""
    rows, chunk = [], 1024
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        try:  # ArrayRecord sources read a list of keys in one call
            records = source.__getitems__(keys)
        except (AttributeError, TypeError):
            records = [source[i] for i in keys]
        rows.extend(np.asarray(r[key]) for r in records)
    shapes = {r.shape for r in rows}
    if len(shapes) > 1:
        first = rows[0].shape
        other = next(i for i, r in enumerate(rows) if r.shape != first)
        raise PoolError(f"{where}: feature {key!r} differs in shape between records: row 0 is {first}, "
                        f"row {other} is {rows[other].shape}")
    return np.stack(rows)


def _tfds_classes(features: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Class names of the ``label`` feature, when the data set's info has them."""
    try:
        names = list(features["label"].names)
    except Exception:
        return None
    if not names or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def load_tfds(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    image_key: str | None = None,
    max_rows: int | None = None,
) -> UnlabeledPool:
    """Load a prepared TFDS split as an unlabeled pool, through the TF-free ``tfds.data_source``.

    The label feature is never read: the point is to label the pool yourself (its class
    names are kept when the data set's info has them). ``image_key`` picks the input
    feature (default ``image``, else the only numeric array feature); uint8 values are
    scaled to [0, 1], others only cast to float32. ``max_rows`` keeps the first rows.
    """
    if not isinstance(name, str) or not name:
        raise PoolError(f"tfds:{name}: the data set name must be a non-empty string")
    where = f"tfds:{name}:{split}"
    if max_rows is not None:
        max_rows = _positive_int(max_rows, "max_rows", where)
    tfds = _import_tfds(where)
    source = _open_tfds(tfds, name, split, data_dir, where)
    n = len(source) if max_rows is None else min(len(source), max_rows)
    if n == 0:
        raise PoolError(f"{where}: the split holds no records")
    features = _tfds_features(source)
    key = _input_key(source[0], _label_keys(features), image_key, where)
    x = _to_float32(_read_feature(source, key, n, where), where, f"feature {key!r}", scale_uint8=True)
    return UnlabeledPool(x=x, files=None, labels={}, classes=_tfds_classes(features), source=where)


# ---------------------------------------------------------------------------- dispatch


_FORMS = ("a folder of images (.png/.jpg/.jpeg)", "a .npz file with an array x",
          "tfds:NAME or tfds:NAME:SPLIT (a prepared TFDS data set)")


def _dispatch(text: str) -> tuple[Callable[..., UnlabeledPool], tuple[Any, ...], dict[str, Any], str]:
    """The loader for ``text``, its positional arguments, options the source implies, and its kind."""
    if text.startswith("tfds:"):
        name, colon, split = text[len("tfds:"):].partition(":")
        if not name or (colon and not split):
            raise PoolError(f"{text}: expected tfds:NAME or tfds:NAME:SPLIT, e.g. tfds:mnist:train")
        return load_tfds, (name,), ({"split": split} if colon else {}), "a TFDS data set"
    if os.path.isdir(text):
        return load_image_folder, (text,), {}, "an image folder"
    if text.lower().endswith(".npz"):
        return load_npz, (text,), {}, "a .npz file"
    what = "is not a directory and does not end in .npz" if os.path.exists(text) else "does not exist"
    raise PoolError(f"{text}: {what}; a pool is one of: {'; '.join(_FORMS)}")


def _check_options(loader: Callable[..., Any], options: Mapping[str, Any], kind: str, where: str) -> None:
    params = inspect.signature(loader).parameters
    accepted = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise PoolError(f"{where}: unknown option(s) {', '.join(unknown)} for {kind} "
                        f"(accepted: {', '.join(accepted)})")


def load_pool(source: str | os.PathLike, **options: Any) -> UnlabeledPool:
    """Load a pool from a folder of images, a ``.npz`` or ``tfds:NAME[:SPLIT]``.

    ``options`` go to the chosen loader (:func:`load_image_folder`, :func:`load_npz`,
    :func:`load_tfds`); one it does not take is a PoolError, not silently ignored.
    """
    try:
        text = os.fsdecode(os.fspath(source))
    except TypeError:
        raise PoolError(f"a pool source must be a path or a string, got {source!r}") from None
    loader, args, implied, kind = _dispatch(text)
    _check_options(loader, options, kind, text)
    clash = sorted(k for k in implied if k in options and options[k] != implied[k])
    if clash:
        raise PoolError(f"{text}: the source names {clash[0]}={implied[clash[0]]!r}, "
                        f"but the options say {clash[0]}={options[clash[0]]!r}")
    return loader(*args, **{**options, **implied})
