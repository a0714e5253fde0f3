"""Hand queries to labeling tools and read the annotators' answers back: plain CSV and Label Studio.

An active-learning round picks pool rows; people label them in a tool of their choice.
This module writes the query in a form the tool imports and reads what it exports:

- **CSV**, for a spreadsheet or a script: :func:`write_query_csv` writes ``index,label``
  (or ``index,file,label``) with the label column empty; :func:`read_answers_csv` reads
  it back once filled, with class indices or class names.
- **Label Studio**: :func:`label_studio_config` is the labeling interface of a
  single-choice classification project, :func:`label_studio_tasks` /
  :func:`write_label_studio_tasks` the tasks to import, and :func:`read_label_studio`
  reads either of its JSON exports ("JSON" and "JSON_MIN").

Label Studio renumbers tasks on import, so the pool row travels in the task's data as
``data["index"]``; when it is missing (tasks made by hand) the row is found from the
file path through the pool's ``files``.

Every answer is an :class:`Answer` ``(index, label, annotator, time)``. Anything wrong
with a file raises :class:`ExchangeError` (a ``ValueError``) naming the file and the
line or task, so a command line can print it as is; an unreadable path raises the
usual ``OSError``. The range of an index against the pool is the caller's to check
(this module may not know the pool's size), but a negative index is always an error.
No JAX here: exchanging files is host work.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import re
from typing import Any, Iterable, NamedTuple, Sequence
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from jaxal.atomic import write_atomic

__all__ = [
    "ExchangeError",
    "Answer",
    "write_query_csv",
    "read_answers_csv",
    "label_studio_config",
    "label_studio_tasks",
    "write_label_studio_tasks",
    "read_label_studio",
    "read_answers",
]

_CHOICES_NAME = "label"  # the Choices tag's name in label_studio_config
_CSV_COLUMNS = ("index", "file", "label", "annotator", "time")
# Keys of a JSON_MIN record that are never the annotators' choice (besides data keys).
_MIN_STANDARD_KEYS = frozenset({
    "id", "index", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
    "agreement", "history", "was_cancelled", "data", "meta", "predictions", "drafts",
})
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's prefix on uploaded file names
_INTEGER = re.compile(r"[+-]?\d+")
_DATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExchangeError(ValueError):
    """A query or answers file that cannot be read or written as asked.

    The message names the file (and the line or task) and what is wrong.
    """


class Answer(NamedTuple):
    """One answer: pool row ``index`` belongs to class ``label`` (in ``[0, C)``).

    ``annotator`` is who answered and ``time`` when (an ISO 8601 string as the file
    gives it); both are ``None`` when the file does not say.
    """

    index: int
    label: int
    annotator: str | None = None
    time: str | None = None


class _Invalid(Exception):
    """A problem in one line or task; the reader adds the file and the place."""


def _error(where: str | None, message: str) -> ExchangeError:
    return ExchangeError(f"{where}: {message}" if where else message)


# --------------------------------------------------------------------------- writing


def _query_rows(indices: Iterable[Any], files: Sequence[str] | None, where: str | None) -> list[int]:
    """The queried rows as Python ints: integers, not negative, inside ``files``, no repeats."""
    rows: list[int] = []
    seen: set[int] = set()
    for value in indices:
        try:
            row = operator.index(value)
        except TypeError:
            raise _error(where, f"index {value!r} is not an integer") from None
        if row < 0:
            raise _error(where, f"index {row} is negative")
        if files is not None and row >= len(files):
            raise _error(where, f"index {row} is outside the pool's files ({len(files)} rows)")
        if row in seen:
            raise _error(where, f"index {row} is queried twice")
        seen.add(row)
        rows.append(row)
    return rows


def write_query_csv(path: str | os.PathLike[str], indices: Sequence[int], *,
                    files: Sequence[str] | None = None) -> str:
    """Write a query as a CSV for annotators and return the path written.

    The header is ``index,file,label`` when ``files`` (``files[i]`` is row ``i``'s file)
    is given, else ``index,label``; one row per queried index, label left empty for
    the annotator. The file is replaced atomically, so a tool never reads half of it.
    """
    path = os.fspath(path)
    rows = _query_rows(indices, files, path)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "file", "label"] if files is not None else ["index", "label"])
    for row in rows:
        writer.writerow([row, os.fspath(files[row]), ""] if files is not None else [row, ""])
    write_atomic(path, out.getvalue().encode("utf-8"), shared=True)
    return path


# --------------------------------------------------------------------------- labels and files


class _Labels:
    """Reads a label: a class index in ``[0, C)`` or a class name (exact, then ignoring case)."""

    def __init__(self, num_classes: int, classes: Sequence[str] | None):
        num_classes = operator.index(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.exact: dict[str, int] = {}
        self.folded: dict[str, list[int]] = {}
        for k, name in enumerate(self.classes or ()):
            self.exact.setdefault(name, k)
            self.folded.setdefault(name.casefold(), []).append(k)

    def label(self, value: Any) -> int:
        """The class of one cell or choice; a name that is also an integer means the name."""
        if isinstance(value, int) and not isinstance(value, bool):
            return self._in_range(value)
        if not isinstance(value, str):
            raise _Invalid(f"label {value!r} is neither a class index nor a class name")
        text = value.strip()
        if text in self.exact:
            return self.exact[text]
        if _INTEGER.fullmatch(text):
            return self._in_range(int(text))
        matches = self.folded.get(text.casefold(), [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = [self.classes[k] for k in matches]
            raise _Invalid(f"label {text!r} matches several classes ignoring case: {names}")
        raise _Invalid(self._unknown(text))

    def single(self, choices: Sequence[Any]) -> int:
        """The class of a single-choice answer; several different choices are an error."""
        distinct = list(dict.fromkeys(str(c) for c in choices))
        if len(distinct) > 1:
            raise _Invalid(f"a multi-choice answer {distinct}; only single-choice answers are read")
        return self.label(choices[0])

    def is_label(self, value: Any) -> bool:
        try:
            self.label(value)
        except _Invalid:
            return False
        return True

    def _in_range(self, k: int) -> int:
        if not 0 <= k < self.num_classes:
            raise _Invalid(f"label {k} is out of range [0, {self.num_classes})")
        return k

    def _unknown(self, text: str) -> str:
        if self.classes is None:
            return (f"label {text!r} is not a class index in [0, {self.num_classes}) "
                    "(pass classes= to read class names)")
        shown = ", ".join(repr(c) for c in self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        return f"label {text!r} is not a class name ({shown}) nor a class index in [0, {self.num_classes})"


def _parse_index(value: Any) -> int:
    """A pool row from a cell or a JSON value: an integer (or its text), not negative."""
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"index {value!r} is not an integer")
    if value < 0:
        raise _Invalid(f"index {value} is negative")
    return value


def _parts(path: str) -> list[str]:
    return [p for p in re.split(r"[\\/]", path) if p and p != "."]


def _path_candidates(value: str) -> list[str]:
    """The paths a value may stand for: a Label Studio ``?d=`` parameter, a URL's path, itself."""
    candidates = []
    if "?" in value or "%" in value or "://" in value:
        split = urlsplit(value)
        # unquote, not parse_qs: a "+" in a file name stays a "+"
        candidates += [unquote(q[2:]) for q in split.query.split("&") if q.startswith("d=")]
        candidates.append(unquote(split.path))
    candidates.append(value)
    return candidates


class _Files:
    """Finds a pool row from a file path or URL: exact path, else the longest matching path tail."""

    def __init__(self, files: Sequence[str]):
        self.files = [os.fspath(f) for f in files]
        self.parts = [_parts(f) for f in self.files]
        self.exact: dict[str, list[int]] = {}
        self.by_name: dict[str, list[int]] = {}
        for row, (name, parts) in enumerate(zip(self.files, self.parts)):
            self.exact.setdefault(name, []).append(row)
            if parts:
                self.by_name.setdefault(parts[-1], []).append(row)

    def row(self, value: Any) -> int:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"file {value!r} is not a path")
        value = value.strip()
        if value in self.exact:
            return self._one(self.exact[value], value)
        for candidate in _path_candidates(value):
            parts = _parts(candidate)
            if not parts:
                continue
            rows = self.by_name.get(parts[-1]) or self.by_name.get(_UPLOAD_PREFIX.sub("", parts[-1]))
            if rows:
                return self._one(self._longest_tail(rows, parts), value)
        raise _Invalid(f"file {value!r} is not one of the pool's files")

    def _longest_tail(self, rows: list[int], parts: list[str]) -> list[int]:
        def tail(row: int) -> int:
            mine, n = self.parts[row], 0
            while n < min(len(mine), len(parts)) and mine[-1 - n] == parts[-1 - n]:
                n += 1
            return n

        scores = [tail(r) for r in rows]
        best = max(scores)
        return [r for r, s in zip(rows, scores) if s == best]

    def _one(self, rows: list[int], value: str) -> int:
        if len(rows) > 1:
            shown = ", ".join(repr(self.files[r]) for r in rows[:3])
            raise _Invalid(f"file {value!r} is ambiguous: it matches pool files {shown}"
                           f"{', ...' if len(rows) > 3 else ''}")
        return rows[0]


def _who(value: Any) -> str | None:
    """An annotator as text: a user dict's email (else its id), an id, a name."""
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    return None if value is None or value == "" else str(value)


def _stamp(record: dict) -> str | None:
    value = record.get("updated_at") or record.get("created_at")
    return None if value is None else str(value)


# --------------------------------------------------------------------------- CSV answers


def _csv_records(path: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV with their line numbers; ``;`` or tab delimiters are accepted."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ExchangeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    first = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first:
        delimiter = ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                records.append((reader.line_num, cells))
    except csv.Error as e:
        raise ExchangeError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    return records


def _csv_columns(path: str, line: int, header: list[str]) -> dict[str, int]:
    """Where each known column is; names are matched ignoring case and surrounding spaces."""
    columns: dict[str, int] = {}
    for position, cell in enumerate(header):
        name = cell.strip().lower()
        if name in _CSV_COLUMNS:
            if name in columns:
                raise ExchangeError(f"{path}:{line}: column {name!r} appears twice in the header")
            columns[name] = position
    shown = ",".join(c.strip() for c in header)
    if "index" not in columns and "file" not in columns:
        raise ExchangeError(f"{path}:{line}: the header {shown!r} has neither an 'index' nor a 'file' column")
    if "label" not in columns:
        raise ExchangeError(f"{path}:{line}: the header {shown!r} has no 'label' column")
    return columns


def _cell(cells: list[str], columns: dict[str, int], name: str) -> str:
    """One cell of a CSV line by column name, stripped; empty when the column or cell is missing."""
    position = columns.get(name)
    return cells[position].strip() if position is not None and position < len(cells) else ""


def _csv_row(cells: list[str], columns: dict[str, int], width: int, files: _Files | None) -> int:
    """The pool row of a CSV line, from its index, its file, or both (which must agree)."""
    if len(cells) > width and any(c.strip() for c in cells[width:]):
        raise _Invalid(f"{len(cells)} cells but the header has {width} (an unquoted comma?)")
    index_cell, file_cell = _cell(cells, columns, "index"), _cell(cells, columns, "file")
    row = _parse_index(index_cell) if index_cell else None
    if file_cell and files is not None:
        by_file = files.row(file_cell)
        if row is not None and by_file != row:
            raise _Invalid(f"file {file_cell!r} is row {by_file} of the pool but the index says {row}")
        return by_file
    if row is None and file_cell:
        raise _Invalid(f"no index for file {file_cell!r}; pass files= to find its row")
    if row is None:
        raise _Invalid("neither an index nor a file")
    return row


def read_answers_csv(path: str | os.PathLike[str], *, num_classes: int, classes: Sequence[str] | None = None,
                     files: Sequence[str] | None = None, annotator: str | None = None) -> list[Answer]:
    """Read annotators' answers from a CSV, in file order.

    Columns (names ignoring case and spaces, other columns ignored): ``index`` and/or
    ``file`` (resolved through ``files`` by exact path, else by unique basename; with
    both, they must agree), ``label`` (a class index or a name from ``classes``), and
    optionally ``annotator`` and ``time``. ``annotator`` is used where the file names
    nobody. A line with an empty label is not answered yet and is skipped; the same row
    answered twice comes back twice, for the caller to reconcile.
    """
    path = os.fspath(path)
    labels = _Labels(num_classes, classes)
    lookup = _Files(files) if files is not None else None
    records = _csv_records(path)
    if not records:
        raise ExchangeError(f"{path}: empty, expected a header such as 'index,label'")
    header_line, header = records[0]
    columns = _csv_columns(path, header_line, header)
    answers = []
    for line, cells in records[1:]:
        label_cell = _cell(cells, columns, "label")
        if not label_cell:
            continue
        try:
            row = _csv_row(cells, columns, len(header), lookup)
            label = labels.label(label_cell)
        except _Invalid as e:
            raise ExchangeError(f"{path}:{line}: {e}") from None
        who, time = _cell(cells, columns, "annotator"), _cell(cells, columns, "time")
        answers.append(Answer(row, label, who or annotator, time or None))
    return answers


# --------------------------------------------------------------------------- Label Studio tasks


def _check_data_key(data_key: str) -> str:
    if not isinstance(data_key, str) or not _DATA_KEY.fullmatch(data_key) or data_key == "index":
        raise ValueError(f"data_key must be an identifier other than 'index', got {data_key!r}")
    return data_key


def label_studio_config(classes: Sequence[str], *, data_key: str = "image") -> str:
    """The labeling interface (XML) of a Label Studio project for single-choice classification.

    An ``<Image>`` shows ``$image``; any other ``data_key`` is shown as ``<Text>``. The
    ``<Choices name="label">`` lists ``classes`` in order, so a choice's position is its
    class index.
    """
    data_key = _check_data_key(data_key)
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("label_studio_config needs at least one class")
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ValueError(f"class names must be distinct and not blank, got {names}")
    attribute = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
    tag = "Image" if data_key == "image" else "Text"
    choices = "".join(f'    <Choice value="{escape(n, attribute)}"/>\n' for n in names)
    return (f'<View>\n  <{tag} name="{data_key}" value="${data_key}"/>\n'
            f'  <Choices name="{_CHOICES_NAME}" toName="{data_key}" choice="single" showInLine="true">\n'
            f"{choices}  </Choices>\n</View>\n")


def _url(file: Any, url_prefix: str | None) -> str:
    """A file's address for Label Studio: the path as given, or ``url_prefix`` joined to it by one ``/``."""
    file = os.fspath(file)
    if not url_prefix:
        return file
    relative = file.replace("\\", "/").lstrip("/")
    if url_prefix.endswith(("/", "=")):  # "=": Label Studio's local files, /data/local-files/?d=
        return url_prefix + relative
    return f"{url_prefix}/{relative}"


def _tasks(indices: Sequence[int], files: Sequence[str] | None, url_prefix: str | None, data_key: str,
           where: str | None) -> list[dict]:
    data_key = _check_data_key(data_key)
    if files is None and data_key == "image":
        raise _error(where, "image tasks need files= (the pool's image paths) to show the images; "
                            "without files, pass another data_key")
    if files is None and url_prefix:
        raise _error(where, "url_prefix= needs files= to point at")
    rows = _query_rows(indices, files, where)
    if files is None:
        return [{"data": {"index": row}} for row in rows]
    return [{"data": {data_key: _url(files[row], url_prefix), "index": row}} for row in rows]


def label_studio_tasks(indices: Sequence[int], *, files: Sequence[str] | None = None,
                       url_prefix: str | None = None, data_key: str = "image") -> list[dict]:
    """One Label Studio task per queried index, in its import format.

    Each task is ``{"data": {data_key: url, "index": i}}``: the url is ``files[i]``
    (prefixed by ``url_prefix``, joined by a single ``/``; a prefix ending in ``=``,
    such as ``/data/local-files/?d=``, is followed by the relative path). Label Studio
    renumbers task ids on import, so the pool row travels in ``data["index"]``. Without
    ``files`` a task is ``{"data": {"index": i}}``, which needs a ``data_key`` other
    than ``"image"``.
    """
    return _tasks(indices, files, url_prefix, data_key, None)


def write_label_studio_tasks(path: str | os.PathLike[str], indices: Sequence[int], *,
                             files: Sequence[str] | None = None, url_prefix: str | None = None,
                             data_key: str = "image") -> str:
    """Write :func:`label_studio_tasks` as a JSON file to import (atomically); return the path."""
    path = os.fspath(path)
    tasks = _tasks(indices, files, url_prefix, data_key, path)
    write_atomic(path, (json.dumps(tasks, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), shared=True)
    return path


# --------------------------------------------------------------------------- Label Studio answers


class _Reader:
    """What reading one Label Studio export needs: the path, the classes, the files."""

    def __init__(self, path: str, labels: _Labels, files: _Files | None, data_key: str):
        self.path, self.labels, self.files, self.data_key = path, labels, files, data_key

    def row(self, data: Any) -> int:
        """The pool row of a task: its ``index``, else its file through ``files``."""
        if not isinstance(data, dict):
            raise _Invalid("no 'data' object to find its pool row in")
        if "index" in data:
            return _parse_index(data["index"])
        value = data.get(self.data_key)
        if value is None:
            raise _Invalid(f"no 'index' nor {self.data_key!r} in its data to find its pool row")
        if self.files is None:
            raise _Invalid(f"no 'index' in its data; pass files= to find the row of {value!r}")
        return self.files.row(value)

    def fail(self, item: dict, position: int, problem: _Invalid) -> ExchangeError:
        task = f"task {item['id']}" if "id" in item else f"task #{position} (no id)"
        return ExchangeError(f"{self.path}: {task}: {problem}")


def _load_export(path: str) -> list[dict]:
    """The export's list of tasks or records; anything else is an error naming the accepted formats."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            items = json.load(f)
    except UnicodeDecodeError as e:
        raise ExchangeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ExchangeError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(items, list):
        raise ExchangeError(f"{path}: a JSON {type(items).__name__} is not a Label Studio export; accepted are "
                            "its 'JSON' export (a list of tasks with 'data' and 'annotations') and its "
                            "'JSON_MIN' export (a list of flat records)")
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise ExchangeError(f"{path}: task #{position}: not a JSON object but {item!r:.60}")
    return items


def _is_full_export(items: list[dict]) -> bool:
    return any(isinstance(t.get("data"), dict) or "annotations" in t or "completions" in t for t in items)


def _annotations(task: dict) -> list:
    value = task.get("annotations", task.get("completions"))  # "completions": Label Studio before 1.0
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid("'annotations' is not a list")
    return value


def _is_choice(result: Any) -> bool:
    return isinstance(result, dict) and isinstance(result.get("value"), dict) and "choices" in result["value"]


def _kept(annotation: Any) -> bool:
    """An annotation that counts: an object, neither cancelled (skipped) by its annotator."""
    return isinstance(annotation, dict) and not (annotation.get("was_cancelled") or annotation.get("skipped"))


def _choice_names(tasks: list[dict]) -> set[str]:
    """The names of the Choices tags that the annotations (not the predictions) answer."""
    names = set()
    for task in tasks:
        for annotation in filter(_kept, task.get("annotations") or task.get("completions") or []):
            for result in annotation.get("result") or []:
                if _is_choice(result):
                    names.add(str(result.get("from_name")))
    return names


def _pick_name(path: str, names: set[str], from_name: str | None) -> str | None:
    if from_name is not None:
        if names and from_name not in names:
            raise ExchangeError(f"{path}: no answers to a Choices tag named {from_name!r}; "
                                f"the answers are to {sorted(names)}")
        return from_name
    if len(names) > 1:
        raise ExchangeError(f"{path}: the answers are to several Choices tags {sorted(names)}; "
                            "pass from_name= to pick one")
    return next(iter(names), None)


def _choices(annotation: dict, from_name: str | None) -> list:
    """The classes one annotation chose in the Choices tag ``from_name``."""
    chosen: list = []
    for result in annotation.get("result") or []:
        if _is_choice(result) and (from_name is None or result.get("from_name") == from_name):
            value = result["value"]["choices"]
            if not isinstance(value, list):
                raise _Invalid(f"choices {value!r} is not a list")
            chosen += value
    return chosen


def _latest(candidates: list[tuple[str | None, int, Any]]) -> tuple[str | None, int, Any]:
    """The most recent of ``(time, position, item)``: ISO times compare as text; ties go to the later item."""
    return max(candidates, key=lambda c: (c[0] or "", c[1]))


def _full_answer(task: dict, reader: _Reader, from_name: str | None) -> Answer | None:
    """The answer of one task of a "JSON" export, or ``None`` when nobody answered it."""
    usable = []
    for position, annotation in enumerate(_annotations(task)):
        if _kept(annotation):
            chosen = _choices(annotation, from_name)
            if chosen:
                usable.append((_stamp(annotation), position, (annotation, chosen)))
    if not usable:
        return None
    time, _, (annotation, chosen) = _latest(usable)
    label = reader.labels.single(chosen)
    return Answer(reader.row(task.get("data")), label, _who(annotation.get("completed_by")), time)


def _read_full(items: list[dict], reader: _Reader, from_name: str | None) -> list[Answer]:
    from_name = _pick_name(reader.path, _choice_names(items), from_name)
    answers = []
    for position, task in enumerate(items):
        try:
            answer = _full_answer(task, reader, from_name)
        except _Invalid as e:
            raise reader.fail(task, position, e) from None
        if answer is not None:
            answers.append(answer)
    return answers


def _choice_shape(value: Any, labels: _Labels) -> tuple[bool, bool, bool]:
    """Whether a JSON_MIN value looks like a choice, whether some of it names a class, whether all does."""
    if isinstance(value, dict):
        shaped = isinstance(value.get("choices"), list)
        return shaped, shaped, shaped
    if isinstance(value, str):
        named = labels.is_label(value)
        return True, named, named
    if isinstance(value, list) and value:
        shapes = [_choice_shape(v, labels) for v in value]
        return all(s[0] for s in shapes), any(s[1] for s in shapes), all(s[2] for s in shapes)
    return False, False, False


def _choice_key(items: list[dict], reader: _Reader) -> str | None:
    """The JSON_MIN key holding the choice, when ``from_name`` does not say.

    Candidates are the keys that are not Label Studio's own, nor in a record without an
    annotation (those are task data), whose values look like choices and name a class.
    Keys whose every value names a class beat the others (a data field may hold a class
    name by chance); a tie asks for ``from_name``.
    """
    seen: dict[str, list[bool]] = {}
    data_keys = {k for r in items if r.get("annotation_id") is None for k in r}
    for record in items:
        for key, value in record.items():
            if key in _MIN_STANDARD_KEYS or key == reader.data_key or key in data_keys or value is None:
                continue
            shaped, some, every = _choice_shape(value, reader.labels)
            state = seen.setdefault(key, [True, False, True])
            state[0] &= shaped
            state[1] |= some
            state[2] &= every
    candidates = {k: every for k, (shaped, some, every) in seen.items() if shaped and some}
    keys = sorted(k for k, every in candidates.items() if every) or sorted(candidates)
    if len(keys) > 1:
        raise ExchangeError(f"{reader.path}: several keys may hold the answers {keys}; "
                            "pass from_name= (the Choices tag's name) to pick one")
    if not keys and any(r.get("annotation_id") is not None for r in items):
        raise ExchangeError(f"{reader.path}: no key holds a class name or choices; "
                            "pass from_name= (the Choices tag's name)")
    return keys[0] if keys else None


def _min_choices(value: Any) -> list:
    """The classes of a JSON_MIN value: a name, ``{"choices": [...]}``, or a list of those."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        return value["choices"]
    if isinstance(value, list):
        return [c for v in value for c in _min_choices(v)]
    raise _Invalid(f"answer {value!r:.60} is neither a class name nor choices")


def _read_min(items: list[dict], reader: _Reader, from_name: str | None) -> list[Answer]:
    """Answers of a "JSON_MIN" export: one record per annotation, the latest per task wins."""
    key = from_name if from_name is not None else _choice_key(items, reader)
    if key is None:
        return []
    if not any(key in r for r in items) and any(r.get("annotation_id") is not None for r in items):
        raise ExchangeError(f"{reader.path}: no record has the key {key!r} (from_name) holding the answers")
    tasks: dict[Any, list] = {}
    for position, record in enumerate(items):
        if record.get(key) is not None:
            task = ("id", record["id"]) if isinstance(record.get("id"), (int, str)) else ("#", position)
            tasks.setdefault(task, []).append((_stamp(record), position, record))
    answers = []
    for candidates in tasks.values():
        time, position, record = _latest(candidates)
        try:
            label = reader.labels.single(_min_choices(record[key]))
            answers.append(Answer(reader.row(record), label, _who(record.get("annotator")), time))
        except _Invalid as e:
            raise reader.fail(record, position, e) from None
    return answers


def read_label_studio(path: str | os.PathLike[str], *, num_classes: int, classes: Sequence[str] | None = None,
                      files: Sequence[str] | None = None, from_name: str | None = None,
                      data_key: str = "image") -> list[Answer]:
    """Read the answers of a Label Studio export ("JSON" or "JSON_MIN"), one per answered task.

    Cancelled (skipped) annotations and predictions are never answers. When a task has
    several annotations the most recent one wins (by ``updated_at``, else
    ``created_at``; list order breaks ties), even when they disagree: a relabel is a
    correction. A choice with more than one class is an error. The row is
    ``data["index"]``, else the file at ``data[data_key]`` found in ``files`` (a URL
    prefix, Label Studio's ``?d=`` and upload prefixes are matched away).
    ``from_name`` picks the Choices tag when the answers use more than one.
    """
    path = os.fspath(path)
    reader = _Reader(path, _Labels(num_classes, classes), _Files(files) if files is not None else None,
                     _check_data_key(data_key))
    items = _load_export(path)
    if _is_full_export(items):
        return _read_full(items, reader, from_name)
    return _read_min(items, reader, from_name)


def read_answers(path: str | os.PathLike[str], **kw: Any) -> list[Answer]:
    """Read answers by the file's extension: ``.csv`` or ``.json`` (a Label Studio export)."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension == ".csv":
        return read_answers_csv(path, **kw)
    if extension == ".json":
        return read_label_studio(path, **kw)
    raise ExchangeError(f"{os.fspath(path)}: cannot tell the format from {extension or 'no extension'!r}; "
                        "answers are read from .csv (CSV) or .json (Label Studio export) files")
