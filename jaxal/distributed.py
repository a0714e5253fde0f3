"""Several processes (hosts) running one active-learning run together (``jax.distributed``).

Every process runs the same program (SPMD): the same config, the same data, the same
random keys. The pool is sharded by rows over a mesh of every device of every process
(:func:`jaxal.pool.pool_mesh`), training is data-parallel over it
(``train(..., mesh=)``), and what is not spread runs replicated: every process
computes the same thing on its own devices. Files are written by process 0 only.

- :func:`initialize` starts ``jax.distributed`` before anything touches a device:
  from its arguments, jaxal's environment (``JAXAL_COORDINATOR=host:port``,
  ``JAXAL_NUM_PROCESSES``, ``JAXAL_PROCESS_ID``), JAX's (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or with none of them JAX's own cluster
  detection (Cloud TPU, SLURM, Open MPI). On CPU the cross-process collectives are
  gloo's (TCP). A process that cannot reach the coordinator says so (after
  ``JAXAL_INIT_TIMEOUT``, default 300 s).
- :func:`is_primary` (process 0, the one that writes), :func:`barrier`.
- :func:`agree`: every process publishes a small JSON value (a config, a data
  fingerprint) and every process fails, naming what differs, unless all are equal.
  :func:`broadcast`: process 0's value on every process. :func:`together`: a block
  that fails on every process when it fails on one (a run directory only process 0
  can lock, a data set one process cannot read), instead of leaving the others
  waiting in their next collective.

These exchanges go through the coordination service's key-value store and barriers
(no device collective), each with a timeout (``JAXAL_SYNC_TIMEOUT``, default 600 s),
so a process that never arrives is reported, not waited for. With one process they
cost nothing and do nothing.

When a process dies, the others learn it at their next collective with it (its
connections close, gloo fails at once, and ``jaxal run`` exits with code 1 and a
message saying to rerun every process with ``--resume``). When it hangs without dying,
JAX's coordination service declares it dead after the heartbeat timeout (60 s here,
``JAXAL_HEARTBEAT_TIMEOUT``; JAX's own default is 100 s) and stops every other process
(JAX aborts them, exit status 134: "Terminating process because the JAX distributed
service detected fatal errors"). Nothing waits forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["initialize", "is_initialized", "joined", "process_index", "process_count", "is_primary", "barrier", "agree",
           "broadcast", "together", "fingerprint_arrays", "DistributedError", "MismatchError", "ENV",
           "HEARTBEAT_TIMEOUT", "INIT_TIMEOUT", "SYNC_TIMEOUT"]

# (argument, jaxal's variable, JAX's variable)
ENV = (
    ("coordinator", "JAXAL_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    ("num_processes", "JAXAL_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    ("process_id", "JAXAL_PROCESS_ID", "JAX_PROCESS_ID"),
)
HEARTBEAT_TIMEOUT = 60  # s without a heartbeat before a process counts as dead
INIT_TIMEOUT = 300  # s to reach the coordinator (processes of a job may start minutes apart)
SHUTDOWN_TIMEOUT = 120  # s a finished process waits at exit for the others to finish
SYNC_TIMEOUT = 600  # s a barrier / agree / broadcast waits for the other processes


class DistributedError(RuntimeError):
    """The processes of a distributed run cannot work together (coordinator unreachable,
    a process that failed or never arrived)."""


class MismatchError(ValueError):
    """The processes were started with different settings or data."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer (seconds)") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1 (seconds), got {value}")
    return value


def _setting(arg: str, value: Any) -> tuple[Any, str | None]:
    """``(value, where it came from)`` for one of ``initialize``'s arguments."""
    _, ours, jaxs = next(e for e in ENV if e[0] == arg)
    if value is not None:
        return value, None
    for var in (ours, jaxs):
        text = os.environ.get(var, "").strip()
        if text:
            return text, var
    return None, None


def _as_int(value: Any, what: str, source: str | None) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{source or what}={value!r} is not an integer") from None


def is_initialized() -> bool:
    """Whether ``jax.distributed`` is running in this process."""
    import jax

    return bool(jax.distributed.is_initialized())


def _client() -> Any:
    from jax._src import distributed as jd

    return jd.global_state.client


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Any = None,
    heartbeat_timeout: int | None = None,
    initialization_timeout: int | None = None,
    shutdown_timeout: int | None = None,
) -> tuple[int, int]:
    """Start ``jax.distributed`` (once; before any JAX computation) and return
    ``(process_index, process_count)``.

    Args:
      coordinator: ``host:port`` of process 0, where it serves the coordination service
        (the same on every process). Default: ``$JAXAL_COORDINATOR``, else
        ``$JAX_COORDINATOR_ADDRESS``.
      num_processes: how many processes take part. Default: ``$JAXAL_NUM_PROCESSES``,
        else ``$JAX_NUM_PROCESSES``.
      process_id: this process, ``0 .. num_processes - 1``; 0 is the coordinator and
        the one that writes files. Default: ``$JAXAL_PROCESS_ID``, else ``$JAX_PROCESS_ID``.
        When none of the three is given anywhere, JAX detects the cluster (Cloud TPU,
        SLURM, Open MPI); settings it cannot detect must be given.
      local_device_ids: restrict this process to these local accelerators (JAX's argument).
      heartbeat_timeout: seconds without a heartbeat after which a process counts as
        dead and every other process stops with an error (default
        ``$JAXAL_HEARTBEAT_TIMEOUT``, else 60).
      initialization_timeout: seconds to wait for the coordinator and every process to
        connect (default ``$JAXAL_INIT_TIMEOUT``, else 300).
      shutdown_timeout: seconds a finishing process waits at exit for the others
        (default ``$JAXAL_SHUTDOWN_TIMEOUT``, else 120).

    Raises:
      ValueError: a setting that is missing (naming the variables that give it) or
        not an integer, or JAX already in use in this process.
      DistributedError: the coordinator could not be reached, or not every process
        connected, within ``initialization_timeout``.
    """
    import jax
    from jax._src import xla_bridge

    if is_initialized():
        return jax.process_index(), jax.process_count()
    coordinator, c_src = _setting("coordinator", coordinator)
    num_processes, n_src = _setting("num_processes", num_processes)
    process_id, p_src = _setting("process_id", process_id)
    num_processes = _as_int(num_processes, "num_processes", n_src)
    process_id = _as_int(process_id, "process_id", p_src)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"{n_src or 'num_processes'} must be at least 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"{p_src or 'process_id'}={process_id} must be in [0, {num_processes}) "
                         f"({n_src or 'num_processes'}={num_processes})")
    if coordinator is not None and (":" not in str(coordinator) or not str(coordinator).rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"{c_src or 'coordinator'}={coordinator!r} must be host:port (process 0's address and a "
                         "free port, the same on every process)")
    heartbeat = heartbeat_timeout or _env_int("JAXAL_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)
    init_timeout = initialization_timeout or _env_int("JAXAL_INIT_TIMEOUT", INIT_TIMEOUT)
    shutdown = shutdown_timeout or _env_int("JAXAL_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT)
    if xla_bridge.backends_are_initialized():
        raise ValueError("jaxal.distributed.initialize must run before any JAX computation in this process (JAX has "
                         "already created its devices); call it first thing, or use `jaxal run --distributed`")
    try:  # CPU processes talk over gloo (TCP); the setting only matters to the CPU client
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - a JAX without the setting
        pass
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if coordinator is not None and process_id not in (None, 0):
        # JAX aborts the process (no Python error) when it cannot reach the coordinator: look first
        _wait_for_coordinator(str(coordinator), init_timeout, process_id, c_src)
    try:
        jax.distributed.initialize(
            coordinator_address=None if coordinator is None else str(coordinator),
            num_processes=num_processes, process_id=process_id, local_device_ids=local_device_ids,
            initialization_timeout=int(init_timeout), heartbeat_timeout_seconds=int(heartbeat),
            shutdown_timeout_seconds=int(shutdown),
        )
    except (ValueError, TypeError) as e:  # a setting JAX could neither find nor detect
        missing = [f"{name} (${ours} or ${jaxs})" for name, ours, jaxs in ENV if given[name] is None]
        if missing:
            raise ValueError(
                f"cannot start the distributed run: no {', '.join(missing)} given and JAX detected no cluster "
                f"(Cloud TPU, SLURM, Open MPI) that would supply it ({e}). Set them on every process, e.g. "
                "JAXAL_COORDINATOR=host0:1234 JAXAL_NUM_PROCESSES=2 JAXAL_PROCESS_ID=0 on host0"
            ) from None
        raise ValueError(f"cannot start the distributed run: {e}") from None
    except Exception as e:  # noqa: BLE001 - jaxlib's runtime errors: connection, deadline
        where = coordinator or "the detected coordinator"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        pid = "?" if process_id is None else process_id
        raise DistributedError(
            f"process {pid}: could not join the distributed run at {where} with {num_processes or '?'} processes "
            f"within {init_timeout} s ({first}). Is process 0 running with the same coordinator address, the port "
            "free on its host and reachable from this one, and every process started with the same "
            "JAXAL_NUM_PROCESSES? (JAXAL_INIT_TIMEOUT sets the wait)"
        ) from None
    return jax.process_index(), jax.process_count()


def _wait_for_coordinator(address: str, timeout: float, process_id: int, source: str | None) -> None:
    """Return once a TCP connection to ``address`` (``host:port``) opens; :class:`DistributedError`
    when none does within ``timeout`` seconds."""
    import socket
    import time

    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except socket.gaierror as e:
            raise DistributedError(f"process {process_id}: cannot resolve the coordinator's host {host!r} "
                                   f"({source or 'coordinator'}={address}): {e}") from None
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise DistributedError(
                f"process {process_id}: could not reach the coordinator at {address} ({source or 'coordinator'}) "
                f"within {timeout:g} s ({last}). Start process 0 (JAXAL_PROCESS_ID=0) there with the same address; "
                "check the host name and that the port is open between the hosts (JAXAL_INIT_TIMEOUT sets the wait)"
            )
        time.sleep(0.25)


def joined() -> bool:
    """Whether this process is one of several in a ``jax.distributed`` job (without
    creating JAX's devices when it is not, nor importing JAX)."""
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import distributed as jd

    return jd.global_state.client is not None and int(jd.global_state.num_processes or 1) > 1


def process_index() -> int:
    import jax

    return int(jax.process_index())


def process_count() -> int:
    import jax

    return int(jax.process_count())


def is_primary() -> bool:
    """Whether this is process 0, the one that writes records, checkpoints and plots
    (always True with one process)."""
    return process_index() == 0


_calls: dict[str, int] = {}


def _key(name: str) -> str:
    """A fresh key for the ``k``-th exchange named ``name`` (the same on every process:
    they make the same calls in the same order)."""
    _calls[name] = _calls.get(name, 0) + 1
    return f"jaxal/{name}/{_calls[name]}"


def _timeout_ms(timeout: float | None) -> int:
    return int(1000 * (timeout if timeout is not None else _env_int("JAXAL_SYNC_TIMEOUT", SYNC_TIMEOUT)))


def _wait_error(what: str, e: BaseException, timeout_ms: int) -> DistributedError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return DistributedError(
        f"process {process_index()}: {what}: not every process of the distributed run arrived within "
        f"{timeout_ms / 1000:g} s, or one failed ({first}). Look at the other processes' output; rerun every "
        "process with --resume to continue from the last checkpoint"
    )


def barrier(name: str, timeout: float | None = None) -> None:
    """Wait until every process has reached ``barrier(name)`` (at most ``timeout``
    seconds, default ``$JAXAL_SYNC_TIMEOUT`` or 600; then :class:`DistributedError`).
    A coordination-service barrier: no device work, so it also works between
    processes whose devices are busy. No-op with one process."""
    if process_count() == 1 or _client() is None:
        return
    key, ms = _key("barrier/" + name), _timeout_ms(timeout)
    try:
        _client().wait_at_barrier(key, ms)
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own runtime error type
        raise _wait_error(f"barrier {name!r}", e, ms) from None


def _exchange(name: str, value: Any, timeout: float | None, sources: Any = None) -> list[Any]:
    """Every process publishes ``json(value)``; returns the values of ``sources``
    (default: every process), in process order."""
    client, n, me = _client(), process_count(), process_index()
    key, ms = _key(name), _timeout_ms(timeout)
    text = json.dumps(value, sort_keys=True, default=_json_default)
    if sources is None or me in sources:
        client.key_value_set(f"{key}/{me}", text)
    out = []
    for p in range(n) if sources is None else sources:
        if p == me:
            out.append(json.loads(text))
            continue
        try:
            out.append(json.loads(client.blocking_key_value_get(f"{key}/{p}", ms)))
        except Exception as e:  # noqa: BLE001
            raise _wait_error(f"waiting for process {p} ({name})", e, ms) from None
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path or 'value'}: {_short(a)} vs {_short(b)}"]


def _short(v: Any, limit: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def agree(name: str, value: Any, timeout: float | None = None) -> None:
    """Check that every process holds the same ``value`` (JSON-able: a config dict,
    fingerprints); :class:`MismatchError` on every process otherwise, naming each
    differing key as ``process 0's value vs process k's``. No-op with one process.

    Use it where processes could have been started differently (other flags, other data
    files): a mismatch found here fails in a second, not as a hang or a silent
    divergence later."""
    if process_count() == 1 or _client() is None:
        return
    values = _exchange("agree/" + name, value, timeout)
    lines = []
    for p, v in enumerate(values[1:], 1):
        lines += [f"process {p}: {d}" for d in _differences(values[0], v)]
    if lines:
        shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
        raise MismatchError(
            f"the processes of the distributed run disagree on {name} (process 0's value vs the other's): {shown}. "
            "Start every process with the same command line and the same data"
        )


def broadcast(name: str, value: Any = None, timeout: float | None = None) -> Any:
    """Process 0's ``value`` (JSON-able) on every process (others' ``value`` is ignored)."""
    if process_count() == 1 or _client() is None:
        return value
    return _exchange("broadcast/" + name, value, timeout, sources=[0])[0]


@contextlib.contextmanager
def together(name: str, timeout: float | None = None) -> Iterator[None]:
    """Shared fate for a block: when it raises on any process, it raises on every one.

    The failing process re-raises its own exception; the others raise it too when its
    class can be rebuilt from its message (a ``ValueError`` such as a run directory
    that is locked or already holds a run keeps its type), else a
    :class:`DistributedError` quoting it. Also a barrier: nobody leaves the block
    before every process has finished it. No-op with one process.
    """
    if process_count() == 1 or _client() is None:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - shared, then re-raised below
        error = e
    mine = None if error is None else {"cls": [type(error).__module__, type(error).__qualname__],
                                       "message": str(error)}
    outcomes = _exchange("together/" + name, mine, timeout)
    if error is not None:
        raise error
    for p, o in enumerate(outcomes):
        if o is not None:
            raise _rebuild(o, p)


def _rebuild(outcome: Mapping[str, Any], p: int) -> BaseException:
    message = f"{outcome['message']} (on process {p})"
    try:
        obj: Any = importlib.import_module(outcome["cls"][0])
        for part in outcome["cls"][1].split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, ValueError):
            return obj(message)
    except Exception:  # noqa: BLE001 - a class that cannot be rebuilt: quote it
        pass
    return DistributedError(f"process {p} failed: {outcome['cls'][1]}: {message}")


def fingerprint_arrays(*arrays: Any, max_bytes: int = 1 << 28) -> str:
    """SHA-256 (hex) of arrays' shapes, dtypes and contents, to check that every process
    loaded the same data. Arrays above ``max_bytes`` are hashed on 4096 evenly spaced
    rows (with their shape), so a large memory-mapped set is not read whole."""
    h = hashlib.sha256()
    for a in arrays:
        shape = tuple(np.shape(a))
        rows = shape[0] if shape else 1
        dtype = np.dtype(getattr(a, "dtype", np.asarray(a[:1] if shape else a).dtype))
        h.update(repr((shape, dtype.str)).encode())
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes <= max_bytes or rows <= 4096:
            h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
        else:
            for i in np.linspace(0, rows - 1, 4096).astype(np.int64):
                h.update(np.ascontiguousarray(np.asarray(a[int(i)])).tobytes())
    return h.hexdigest()
