"""A labeling session: active learning with a real annotator, resumable from a directory.

``jaxal run`` simulates the annotator with held labels; a :class:`Session` asks a person.
It runs the very rounds of :mod:`jaxal.experiment.loop` (same keys, same query, same
training and restarts, same round records and stopping signals), split where the
person answers::

    s = Session.create("cats", "photos/", classes=["cat", "dog"])   # or Session.open("cats")
    idx = s.query(20)                      # round 0: a random initial set; then the strategy
    s.teach(idx, answers)                  # validated, stored atomically
    s.query(20)                            # trains on the new labels first, then asks again

so a session answered by a simulated annotator labels exactly what ``jaxal run`` labels
with the same seed and settings (a test checks it).

**Instant mode** (``instant=True``, a look-ahead strategy: ``mlmoc``, ``emoc``, ``eer``,
``flip_rate``): between retrains each :meth:`teach` conditions the look-ahead's NTK
state on the true label by the exact rank-1 update (:class:`jaxal.lookahead.Sequential`)
and ``query(1)`` returns the next point at once, without SGD; a full retrain runs on
:meth:`fit` or every ``retrain_every`` labels.

**The directory** holds everything, each file replaced atomically (temporary file,
``fsync``, rename), so a kill at any instant leaves the old or the new version::

    session.json        settings: the ExperimentConfig, classes, pool shape, instant mode
    pool.npy            the inputs (memory-mapped when opened); files.json: image names
    heldout.npz         an optional labeled set to measure accuracy on
    labels.jsonl        every answer: index, label, annotator, time, queried or not
    queries.jsonl       every query: round, indices, time, the strategy's info
    checkpoint.msgpack  the model after the last fit, its labeled set and round records
    pending_query.msgpack  the strategy state and info of the query not yet trained on
    instant.npz         the look-ahead state of instant mode
    .lock               held while a Session is open: a second writer gets SessionLockedError
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from jaxal import models as models_lib
from jaxal import stopping, strategies
from jaxal.experiment import checkpoint as ckpt
from jaxal.experiment import loop
from jaxal.experiment.config import ExperimentConfig, json_default, validate
from jaxal.labeling.pools import UnlabeledPool, load_pool
from jaxal.lookahead import core
from jaxal.lookahead.sequential import Sequential
from jaxal.ops.random import host_permutation, split

__all__ = [
    "Session",
    "SessionError",
    "SessionExistsError",
    "SessionLockedError",
    "CorruptSessionError",
    "UnknownIndexError",
    "LabelRangeError",
    "LabelConflictError",
    "INSTANT_STRATEGIES",
]

FORMAT, VERSION = "jaxal-session", 1
SESSION_FILE, POOL_FILE, FILES_FILE, HELDOUT_FILE = "session.json", "pool.npy", "files.json", "heldout.npz"
LABELS_FILE, QUERIES_FILE, CHECKPOINT_FILE = "labels.jsonl", "queries.jsonl", "checkpoint.msgpack"
PENDING_FILE, INSTANT_FILE = "pending_query.msgpack", "instant.npz"
INSTANT_STRATEGIES = ("mlmoc", "emoc", "eer", "flip_rate")
INSTANT_CANDIDATES = 2000  # instant mode's candidate set when config.candidates is None: its state is O(U²)
_EVERY_RUN_SIGNALS = ("kappa", "change", "uncertainty", "budget")  # rules every session can fire (later)
_LOOKAHEAD_KEYS = ("probability", "approximation", "contraction", "subset", "depth", "jitter", "variance_floor")


class SessionError(ValueError):
    """A session operation that cannot be done as asked; nothing stored was changed."""


class SessionExistsError(SessionError):
    """``create`` on a directory that already holds a session."""


class SessionLockedError(SessionError):
    """Another open :class:`Session` (this process or another) is writing the directory."""


class CorruptSessionError(SessionError):
    """A session file is missing, unreadable or inconsistent with the others."""


class UnknownIndexError(SessionError, IndexError):
    """An index outside the pool ``[0, N)``."""


class LabelRangeError(SessionError):
    """A label that is not a class: outside ``[0, C)`` or an unknown class name."""


class LabelConflictError(SessionError):
    """A point given two different labels (in one call, or against a stored answer)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json_lines(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    ckpt.write_atomic(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows).encode())


def _read_json_lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptSessionError(f"{path} is unreadable ({e}); the session cannot be opened") from e


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


class Session:
    """An active-learning session with a human annotator, stored in a directory.

    Create one with :meth:`create`, reopen it with :meth:`open` (another day, another
    machine: copy the directory). Use it as a context manager or call :meth:`close`:
    an open session holds the directory's lock.

    Attributes:
      directory: where it lives.
      config: the :class:`~jaxal.experiment.config.ExperimentConfig` (model, strategy,
        training, restarts, seed; ``initial_size`` is the first query's default size,
        ``budget`` the later ones', ``stop`` the rules :meth:`status` checks).
      classes: class names (``None``: classes are the integers ``0..C-1``).
      num_classes: ``C``.
      files: row ``i``'s file for an image folder, else ``None``.
      instant, retrain_every: instant mode and its automatic retrain period.
    """

    # ----------------------------------------------------------------- create / open / close

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        pool: str | os.PathLike | UnlabeledPool | np.ndarray,
        *,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        config: ExperimentConfig | None = None,
        heldout: tuple[Any, Any] | str | os.PathLike | None = None,
        instant: bool = False,
        retrain_every: int | None = None,
        **pool_options: Any,
    ) -> "Session":
        """A new session over ``pool`` in ``directory`` (created; it must not hold a session).

        Args:
          pool: an :class:`~jaxal.labeling.pools.UnlabeledPool`, an array of inputs, or a
            source for :func:`jaxal.labeling.pools.load_pool` (a ``.npz``, an image folder,
            ``tfds:NAME[:SPLIT]``) with ``pool_options`` for its loader.
          num_classes, classes: ``C`` and, optionally, the class names (the pool's own
            names when it has them); one of the two is needed.
          config: the settings (default :class:`ExperimentConfig`\\ ()); its ``dataset``
            is replaced by the pool's source.
          heldout: ``(x, y)`` or a ``.npz`` with ``x`` and ``y``: a labeled set each fit is
            evaluated on (``None``: no accuracy, the stopping signals still work).
          instant: instant mode (a look-ahead strategy, see the module docstring).
          retrain_every: with ``instant``, retrain after this many new labels
            (``None``: only when :meth:`fit` is called).
        """
        directory = os.fspath(directory)
        if os.path.exists(os.path.join(directory, SESSION_FILE)):
            raise SessionExistsError(f"{directory} already holds a labeling session; open it with Session.open "
                                     "(CLI: jaxal session status/query/teach DIR) or choose another directory")
        if isinstance(pool, UnlabeledPool):
            if pool_options:
                raise SessionError(f"pool options {sorted(pool_options)} apply to a pool source, not a loaded pool")
        elif isinstance(pool, np.ndarray):
            pool = UnlabeledPool(np.asarray(pool, dtype=np.float32), None, {}, None, "array")
        else:
            pool = load_pool(pool, **pool_options)
        classes = tuple(str(c) for c in classes) if classes is not None else pool.classes
        if classes is not None and len(set(classes)) != len(classes):
            raise SessionError(f"classes has duplicate names: {list(classes)}")
        if num_classes is None:
            if classes is None:
                raise SessionError("give num_classes or classes: the session cannot guess how many classes there are")
            num_classes = len(classes)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise SessionError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if classes is not None and len(classes) != num_classes:
            raise SessionError(f"{len(classes)} class names for num_classes={num_classes}")
        bad = {i: y for i, y in pool.labels.items() if not 0 <= y < num_classes}
        if bad:
            raise LabelRangeError(f"the pool's labels {dict(list(bad.items())[:5])} are outside [0, {num_classes})")
        config = dataclasses.replace(config or ExperimentConfig(), dataset=pool.source)
        x = np.asarray(pool.x, dtype=np.float32)
        _check_settings(config, x, int(num_classes), instant, retrain_every)
        x_held, y_held = _heldout(heldout, x.shape[1:], int(num_classes))

        os.makedirs(directory, exist_ok=True)
        with loop.locked(directory, SessionLockedError):  # nobody else may create it meanwhile
            ckpt.write_atomic(os.path.join(directory, POOL_FILE), _npy_bytes(x))
            if pool.files is not None:
                ckpt.write_atomic(os.path.join(directory, FILES_FILE), json.dumps(list(pool.files)).encode())
            if x_held is not None:
                buf = io.BytesIO()
                np.savez(buf, x=x_held, y=y_held)
                ckpt.write_atomic(os.path.join(directory, HELDOUT_FILE), buf.getvalue())
            stamp = _now()
            _write_json_lines(os.path.join(directory, LABELS_FILE), [
                {"index": int(i), "label": int(y), "annotator": f"pool ({pool.source})", "time": stamp, "queried": False}
                for i, y in sorted(pool.labels.items())])
            meta = {"format": FORMAT, "version": VERSION, "created": stamp, "source": pool.source,
                    "n": int(x.shape[0]), "shape": list(x.shape[1:]), "num_classes": int(num_classes),
                    "classes": None if classes is None else list(classes), "instant": bool(instant),
                    "retrain_every": retrain_every, "config": config.to_dict()}
            # session.json last: a directory without it is not a session yet, and can be created again
            ckpt.write_atomic(os.path.join(directory, SESSION_FILE), (json.dumps(meta, indent=2) + "\n").encode())
        return cls.open(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, on_event: Callable[[str, int], None] | None = None) -> "Session":
        """Reopen a session; it holds the directory's lock until :meth:`close`.

        ``on_event(event, round)`` is called after ``"queried"``, ``"trained"`` (before the
        fit is saved) and ``"saved"``; tests raise from it to simulate a kill.
        """
        return cls(os.fspath(directory), on_event)

    def __init__(self, directory: str, on_event: Callable[[str, int], None] | None = None) -> None:
        meta_path = os.path.join(directory, SESSION_FILE)
        if not os.path.isdir(directory):
            raise SessionError(f"{directory} does not exist; create a session there first (jaxal session init)")
        if not os.path.exists(meta_path):
            raise CorruptSessionError(f"{directory} is not a labeling session (no {SESSION_FILE}); create one with "
                                      "Session.create / jaxal session init")
        self.directory = directory
        self._lock = loop.locked(directory, SessionLockedError)
        self._lock.__enter__()
        try:
            self._load(meta_path)
        except BaseException:
            self.close()
            raise
        self._emit = on_event or (lambda event, r: None)

    def close(self) -> None:
        """Release the directory's lock (the session's files are always saved)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.__exit__(None, None, None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _load(self, meta_path: str) -> None:
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r} is not {FORMAT!r}")
            if int(meta.get("version", 0)) > VERSION:
                raise ValueError(f"version {meta['version']} is newer than this jaxal's {VERSION}: upgrade jaxal")
            self.config = ExperimentConfig.from_dict(meta["config"])
            self.num_classes = int(meta["num_classes"])
            self.classes = None if meta["classes"] is None else tuple(meta["classes"])
            self.instant, self.retrain_every = bool(meta["instant"]), meta["retrain_every"]
            self.source = str(meta["source"])
            n, shape = int(meta["n"]), tuple(meta["shape"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptSessionError(f"{meta_path} is unreadable ({e}); the session cannot be opened") from e
        try:
            self.x = np.load(self._path(POOL_FILE), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorruptSessionError(f"{self._path(POOL_FILE)} is unreadable ({e})") from e
        if self.x.shape != (n, *shape):
            raise CorruptSessionError(f"{self._path(POOL_FILE)} holds shape {self.x.shape}, session.json says "
                                      f"{(n, *shape)}")
        self.files = None
        if os.path.exists(self._path(FILES_FILE)):
            with open(self._path(FILES_FILE), encoding="utf-8") as f:
                self.files = tuple(json.load(f))
        self.x_heldout = self.y_heldout = None
        if os.path.exists(self._path(HELDOUT_FILE)):
            with np.load(self._path(HELDOUT_FILE), allow_pickle=False) as z:
                self.x_heldout, self.y_heldout = z["x"], z["y"]
        self._answers = _read_json_lines(self._path(LABELS_FILE))
        self._queries = _read_json_lines(self._path(QUERIES_FILE))
        self._labels = {int(a["index"]): int(a["label"]) for a in self._answers}
        module = models_lib.create(self.config.model, self.num_classes, input_shape=shape,
                                   **dict(self.config.model_options))
        y = np.full(n, -1, dtype=np.int64)
        for i, label in self._labels.items():
            y[i] = label
        root = jax.random.key(self.config.seed)
        self._env = loop.LoopEnv(
            config=self.config, module=module, strategy=strategies.get(self.config.strategy), x_train=self.x,
            y_train=y, x_test=self.x_heldout, y_test=self.y_heldout, num_classes=self.num_classes, root=root,
            ssl_config=loop.ssl_config_of(self.config), emit=lambda event, r: self._emit(event, r),
            stop_rows=loop.stop_rows(root, n),
        )
        initial = loop.initial_variables(self._env)
        if os.path.exists(self._path(CHECKPOINT_FILE)):
            c = ckpt.load(self._path(CHECKPOINT_FILE), variables_template=initial, fingerprint=self.config.fingerprint(),
                          config=self.config.to_dict(), ignore=loop.RESUMABLE_KEYS)
            self._state = loop.LoopState(c.round, np.asarray(c.labeled, dtype=np.int64), c.variables,
                                         c.strategy_state, tuple(c.records))
        else:
            self._state = loop.LoopState(-1, np.zeros(0, dtype=np.int64), initial, None, ())
        missing = [int(i) for i in self._state.labeled if int(i) not in self._labels]
        if missing:
            raise CorruptSessionError(f"the model was trained on rows {missing[:5]} whose labels are not in "
                                      f"{self._path(LABELS_FILE)}: the files come from different sessions")
        self._pending_query = self._read_pending()
        self._seq: tuple[Sequential, np.ndarray] | None = self._read_instant()

    # ----------------------------------------------------------------- what the session knows

    @property
    def n(self) -> int:
        """Pool size ``N``."""
        return int(self.x.shape[0])

    @property
    def labels(self) -> dict[int, int]:
        """Every answer so far: pool row -> class."""
        return dict(self._labels)

    @property
    def answers(self) -> list[dict]:
        """Every answer with its annotator, time and whether it was queried, in teaching order."""
        return [dict(a) for a in self._answers]

    @property
    def round(self) -> int:
        """The last fitted round (``-1`` before the first fit)."""
        return int(self._state.round)

    @property
    def history(self) -> list[dict]:
        """The round records of the fits so far (:mod:`jaxal.experiment.loop`'s format)."""
        return list(self._state.records)

    @property
    def pending(self) -> np.ndarray:
        """Rows answered since the last fit, in teaching order (the next fit adds them)."""
        trained = set(self._state.labeled.tolist())
        return np.array([a["index"] for a in self._answers if a["index"] not in trained], dtype=np.int64)

    def files_of(self, indices: Sequence[int]) -> list[str]:
        """Row ``i``'s file for each index (image-folder pools only)."""
        if self.files is None:
            raise SessionError(f"this session's pool ({self.source}) has no files; its rows are indices")
        return [self.files[int(i)] for i in indices]

    def model(self) -> Any:
        """The last fitted model as a :class:`jaxal.model.Model`."""
        if self.round < 0:
            raise SessionError("no model yet: teach some labels, then fit()")
        return models_lib.as_model(self._env.module, self._state.variables)

    # ----------------------------------------------------------------- query

    def query(self, budget: int | None = None) -> np.ndarray:
        """The pool rows to label next (int64).

        Before the first fit with no labels at all this is the random initial set
        (``config.initial_size`` rows by default), the draw ``jaxal run`` makes. When
        answers arrived since the last fit, the model is retrained on them first
        (:meth:`fit`), except in instant mode, where the look-ahead state already holds
        them. Asking twice without teaching gives the same rows.
        """
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1):
            raise SessionError(f"budget must be a positive integer, got {budget!r}")
        if not self._labels and self.round < 0:
            size = int(budget or self.config.initial_size)
            unl = self.n
            if size > unl:
                raise SessionError(f"budget {size} is larger than the pool ({unl} rows)")
            env = self._env._replace(config=dataclasses.replace(self.config, initial_size=size))
            chosen, info, r = loop.initial_set(env), {"initial_set": True}, 0
        elif self.instant:
            if self.round < 0:
                self.fit()  # the look-ahead linearises a trained network
            chosen, info, r = self._instant_query(int(budget or 1)), {"instant": True}, self.round + 1
        else:
            if len(self.pending):
                self.fit()
            chosen, info, r = self._strategy_query(int(budget or self.config.budget))
        self._queries.append({"round": r, "indices": [int(i) for i in chosen], "time": _now(),
                              "strategy": self.config.strategy, "info": json.loads(json.dumps(info, default=json_default))})
        _write_json_lines(self._path(QUERIES_FILE), self._queries)
        self._emit("queried", r)
        return np.asarray(chosen, dtype=np.int64)

    def _strategy_query(self, budget: int) -> tuple[np.ndarray, dict, int]:
        r = self.round + 1
        unlabeled = self.n - len(self._state.labeled)
        if budget > unlabeled:
            raise SessionError(f"budget {budget} is larger than the {unlabeled} unlabeled rows")
        k_candidates, k_query, _, _ = split(loop.round_key(self._env.root, r), 4)
        env = self._env._replace(config=dataclasses.replace(self.config, budget=budget))
        chosen, info, strategy_state = loop.query_step(env, self._state, k_candidates, k_query)
        self._pending_query = {"round": r, "info": info, "strategy_state": strategy_state}
        ckpt.write_atomic(self._path(PENDING_FILE), msgpack.packb(
            {"round": r, "info": json.dumps(info, default=json_default),
             "strategy_state": ckpt.encode_tree(strategy_state)}, use_bin_type=True))
        return chosen, info, r

    def _read_pending(self) -> dict | None:
        if not os.path.exists(self._path(PENDING_FILE)):
            return None
        try:
            with open(self._path(PENDING_FILE), "rb") as f:
                d = msgpack.unpackb(f.read(), raw=False)
            pending = {"round": int(d["round"]), "info": json.loads(d["info"]),
                       "strategy_state": ckpt.decode_tree(d["strategy_state"])}
        except Exception as e:  # noqa: BLE001 - any decoding failure means the same thing
            raise CorruptSessionError(f"{self._path(PENDING_FILE)} is unreadable ({e}); delete it to drop the last "
                                      "query's strategy state (the answers are kept)") from e
        return pending if pending["round"] == self.round + 1 else None

    # ----------------------------------------------------------------- teach

    def teach(self, indices: Sequence[int] | int, labels: Sequence[Any] | Any, *,
              annotator: str | Sequence[str | None] | None = None, time: str | Sequence[str | None] | None = None) -> int:
        """Store answers: pool rows and their labels (class indices or class names).

        Every answer is checked before anything is written (:class:`UnknownIndexError`,
        :class:`LabelRangeError`, :class:`LabelConflictError`), then all are stored in one
        atomic write. A row that was never queried is accepted and recorded as such; the
        same answer twice is stored once. In instant mode each answer conditions the
        look-ahead state at once, and ``retrain_every`` answers trigger a :meth:`fit`.
        ``annotator`` and ``time`` (default: now) are one value for every answer or one
        per answer.

        Returns:
          The number of new answers.
        """
        idx = np.atleast_1d(np.asarray(indices))
        labs = list(labels) if isinstance(labels, (list, tuple, np.ndarray)) else [labels]
        if idx.ndim != 1 or len(labs) != idx.shape[0]:
            raise SessionError(f"teach needs one label per index: {idx.shape[0]} indices, {len(labs)} labels")
        queried = {i for q in self._queries for i in q["indices"]}
        seen: dict[int, int] = {}
        new = []
        who_all, when_all = _per_answer(annotator, len(labs), "annotator"), _per_answer(time, len(labs), "time")
        stamp = _now()
        for raw_i, raw_y, who_i, when_i in zip(idx.tolist(), labs, who_all, when_all):
            i, y = self._check_index(raw_i), self._class_of(raw_y)
            before = self._labels.get(i, seen.get(i))
            if before is not None and before != y:
                who = next((a for a in self._answers if a["index"] == i), None)
                where = f" by {who['annotator']} at {who['time']}" if who else " earlier in this call"
                raise LabelConflictError(f"row {i} was labeled {self._name(before)}{where}; now {self._name(y)}. "
                                         "Nothing was stored: resolve the disagreement and teach again")
            if before is None:
                seen[i] = y
                new.append({"index": i, "label": y, "annotator": who_i, "time": when_i or stamp,
                            "queried": i in queried})
        if not new:
            return 0
        _write_json_lines(self._path(LABELS_FILE), self._answers + new)
        self._answers += new
        for a in new:
            self._labels[a["index"]] = a["label"]
            self._env.y_train[a["index"]] = a["label"]
        if self.instant:
            self._absorb([(a["index"], a["label"]) for a in new])
            if self.retrain_every and len(self.pending) >= int(self.retrain_every):
                self.fit()
        return len(new)

    def _check_index(self, i: Any) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise UnknownIndexError(f"index {i!r} is not an integer row of the pool")
        if not 0 <= int(i) < self.n:
            raise UnknownIndexError(f"index {i} is outside the pool [0, {self.n})")
        return int(i)

    def _class_of(self, y: Any) -> int:
        if isinstance(y, str) and self.classes is not None and y in self.classes:
            return self.classes.index(y)
        try:
            c = int(y) if not isinstance(y, (bool, np.bool_, float)) or float(y).is_integer() else None
        except (TypeError, ValueError):
            c = None
        if c is None or not 0 <= c < self.num_classes:
            names = f" or one of {list(self.classes)}" if self.classes else ""
            raise LabelRangeError(f"label {y!r} is not a class: use an integer in [0, {self.num_classes}){names}")
        return c

    def _name(self, y: int) -> str:
        return repr(self.classes[y]) if self.classes else str(y)

    # ----------------------------------------------------------------- fit

    def fit(self) -> dict:
        """Retrain on every answer so far (the round's restart: cold, warm or
        shrink-and-perturb), evaluate on the held-out set, measure the stopping signals,
        and save. Returns the round record (``jaxal run``'s format)."""
        new = self.pending
        if not len(new):
            raise SessionError("no new answers since the last fit: teach some labels first"
                               if self.round >= 0 or not self._labels else "nothing to fit")
        r = self.round + 1
        _, _, k_restart, k_train = split(loop.round_key(self._env.root, r), 4)
        pq = self._pending_query if self._pending_query and self._pending_query["round"] == r else None
        info = dict(pq["info"]) if pq else {}
        not_queried = int(sum(not a["queried"] for a in self._answers if a["index"] in set(new.tolist())))
        if not_queried:
            info["not_queried"] = not_queried
        strategy_state = pq["strategy_state"] if pq else self._state.strategy_state
        state, record = loop.learn_step(self._env, self._state, new, (k_restart, k_train),
                                        strategy_state=strategy_state, info=info)
        state, _ = loop.with_stop(state, self.config.stop)
        record = state.records[-1]
        ckpt.save(self._path(CHECKPOINT_FILE), **state._asdict(), config=self.config.to_dict(),
                  fingerprint=self.config.fingerprint())
        self._state, self._pending_query, self._seq = state, None, None
        for stale in (PENDING_FILE, INSTANT_FILE):  # both belong to the model just replaced
            if os.path.exists(self._path(stale)):
                os.remove(self._path(stale))
        self._emit("saved", r)
        return record

    # ----------------------------------------------------------------- instant mode

    def _instant_query(self, budget: int) -> np.ndarray:
        if self._seq is None:
            self._seq = self._build_instant()
            self._save_instant()
        seq, rows = self._seq
        scores = np.asarray(seq.scores(), dtype=np.float64)
        available = int(np.sum(np.isfinite(scores) & ~np.asarray(seq.queried)))
        if budget > available:
            raise SessionError(f"budget {budget} is larger than the {available} candidates instant mode still holds; "
                               "fit() to start over from the whole pool")
        order = np.argsort(-scores, kind="stable")
        return rows[order[:budget]]

    def _build_instant(self) -> tuple[Sequential, np.ndarray]:
        """A fresh look-ahead solve: the last model, every answer so far, candidates the
        unlabeled rows (a uniform subset of ``config.candidates`` or 2,000)."""
        known = np.array(list(self._labels), dtype=np.int64)
        unlabeled = np.setdiff1d(np.arange(self.n), known)
        size = self.config.candidates or INSTANT_CANDIDATES
        if unlabeled.shape[0] > size:
            key = jax.random.fold_in(loop.round_key(self._env.root, self.round + 1), 1 + len(known))
            unlabeled = np.sort(unlabeled[host_permutation(key, unlabeled.shape[0])[:size]])
        if not unlabeled.shape[0]:
            raise SessionError("every row of the pool is labeled")
        options = {k: v for k, v in dict(self.config.strategy_options).items() if k in _LOOKAHEAD_KEYS}
        seq = Sequential(self.model(), self.x[known], self._env.y_train[known], x_pool=self.x[unlabeled],
                         objective=self.config.strategy, num_classes=self.num_classes, **options)
        return seq, unlabeled

    def _absorb(self, answers: list[tuple[int, int]]) -> None:
        """Condition the instant state on new answers (rank-1 each); an answer outside its
        candidates drops it (the next query solves afresh, with the answer)."""
        if self._seq is None:
            return
        seq, rows = self._seq
        where = {int(r): k for k, r in enumerate(rows)}
        for i, y in answers:
            if i not in where:
                self._seq = None
                if os.path.exists(self._path(INSTANT_FILE)):
                    os.remove(self._path(INSTANT_FILE))
                return
            seq = seq.add(where[i], y)
        self._seq = (seq, rows)
        self._save_instant()

    def _save_instant(self) -> None:
        seq, rows = self._seq
        arrays = {f: np.asarray(v) for f, v in seq.state._asdict().items()}
        buf = io.BytesIO()
        np.savez(buf, rows=rows, round=np.int64(self.round), n_answers=np.int64(len(self._answers)),
                 objective=np.str_(seq.objective), probability=np.str_(seq.probability), **arrays)
        ckpt.write_atomic(self._path(INSTANT_FILE), buf.getvalue())

    def _read_instant(self) -> tuple[Sequential, np.ndarray] | None:
        if not self.instant or not os.path.exists(self._path(INSTANT_FILE)):
            return None
        try:
            with np.load(self._path(INSTANT_FILE), allow_pickle=False) as z:
                if int(z["round"]) != self.round or int(z["n_answers"]) != len(self._answers):
                    return None  # built for another model or before answers it has not absorbed: solve afresh
                state = core.LookaheadState(**{f: jnp.asarray(z[f]) for f in core.LookaheadState._fields})
                seq = Sequential.from_state(state, str(z["objective"]), str(z["probability"]))
                return seq, np.asarray(z["rows"], dtype=np.int64)
        except (OSError, ValueError, KeyError) as e:
            raise CorruptSessionError(f"{self._path(INSTANT_FILE)} is unreadable ({e}); delete it (the next query "
                                      "solves the look-ahead afresh)") from e

    # ----------------------------------------------------------------- status

    def status(self, rules: Sequence[str] | None = None) -> dict:
        """Labels so far, class counts, the last fit's metrics and signals, and where the
        stopping rules stand (``rules``: default ``config.stop`` plus
        :data:`jaxal.stopping.DEFAULT_RULES`): ``stopping`` says each rule's verdict,
        ``stopped_at`` the round of each rule that fired."""
        counts = np.bincount(np.array(list(self._labels.values()), dtype=np.int64), minlength=self.num_classes)
        names = self.classes or tuple(str(c) for c in range(self.num_classes))
        rules = list(rules) if rules is not None else list(self.config.stop) + [
            r for r in stopping.DEFAULT_RULES if r not in self.config.stop]
        last = self.history[-1] if self.history else None
        points = [stopping.where(self.history, rule) for rule in rules] if last is not None else []
        return {
            "directory": self.directory,
            "pool": self.n,
            "labels": len(self._labels),
            "pending": int(len(self.pending)),
            "not_queried": int(sum(not a["queried"] for a in self._answers)),
            "class_counts": {name: int(c) for name, c in zip(names, counts)},
            "fits": self.round + 1,
            "strategy": self.config.strategy,
            "instant": self.instant,
            "heldout_accuracy": None if last is None else last.get("test_accuracy"),
            "signals": {} if last is None else dict(last.get("signals") or {}),
            "stopping": {
                p.rule: (f"stop (fired at round {p.round}, {p.n_labeled} labels)" if p.stopped
                         else "continue" if p.applicable or p.rule.split(":")[0] in _EVERY_RUN_SIGNALS else "n/a")
                for p in points},
            "stopped_at": {p.rule: p.round for p in points if p.stopped},
        }


def _per_answer(value: Any, n: int, name: str) -> list[Any]:
    """One value per answer from a single value or a sequence of ``n``."""
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise SessionError(f"{name} must be one value or one per answer ({n}), got {len(values)}")
    return values


def _check_settings(config: ExperimentConfig, x: np.ndarray, num_classes: int, instant: bool,
                    retrain_every: int | None) -> None:
    """The settings' checks that need no training (``SessionError`` / ``ValueError`` naming the field)."""
    if x.ndim < 2 or x.shape[0] < 2:
        raise SessionError(f"the pool needs at least 2 rows of inputs, got shape {x.shape}")
    validate(dataclasses.replace(config, dataset="digits"))  # the pool is the session's own: check the rest
    if config.balanced_init:
        raise SessionError("balanced_init needs the labels of the whole pool, which a labeling session does not have")
    if config.sequential:
        raise SessionError("sequential=True asks held labels between picks, which a labeling session does not have; "
                           "use instant=True (the look-ahead conditioned on each real answer)")
    loop.checked_module(config, num_classes, tuple(x.shape[1:]), max(1, min(config.budget, x.shape[0] - 1)))
    if instant and config.strategy not in INSTANT_STRATEGIES:
        raise SessionError(f"instant mode needs a look-ahead strategy ({', '.join(INSTANT_STRATEGIES)}); "
                           f"got {config.strategy!r}")
    if retrain_every is not None:
        if not instant:
            raise SessionError("retrain_every is instant mode's retrain period: without instant mode every query "
                               "retrains on new answers")
        if isinstance(retrain_every, bool) or not isinstance(retrain_every, (int, np.integer)) or retrain_every < 1:
            raise SessionError(f"retrain_every must be a positive integer, got {retrain_every!r}")


def _heldout(heldout: Any, shape: tuple, num_classes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The held-out set as ``(x float32, y int64)``, checked against the pool's input shape."""
    if heldout is None:
        return None, None
    if isinstance(heldout, (str, os.PathLike)):
        try:
            with np.load(heldout, allow_pickle=False) as z:
                x, y = z["x"], z["y"]
        except (OSError, ValueError, KeyError) as e:
            raise SessionError(f"held-out set {os.fspath(heldout)}: needs a .npz with arrays x and y ({e})") from e
    else:
        x, y = heldout
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
    if x.shape[1:] != tuple(shape) or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise SessionError(f"held-out set: x {x.shape} and y {y.shape} must be [M, *{tuple(shape)}] and [M], M >= 1")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise LabelRangeError(f"held-out labels must be integers in [0, {num_classes})")
    return x, y.astype(np.int64)
