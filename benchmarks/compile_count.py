"""How many XLA compilations a run triggers, and how much of its time they take.

Counts JAX's own monitoring events in this process (``/jax/core/compile/backend_compile_duration``,
one per backend compilation; the persistent compilation cache is left off so every
compile is real, unless ``--cache DIR`` is given), for the default ``jaxal run`` (or any ``jaxal run`` flags given after
``--``), and breaks them down by the name of the compiled program.

    python benchmarks/compile_count.py [--json PATH] [--twice] [--cache DIR] [-- RUN FLAGS...]

Run it twice with the same ``--cache DIR`` (two processes) to see what the persistent
cache saves a user who reruns an experiment.

``--twice`` runs the same experiment a second time in the same process: a second
identical run should compile (almost) nothing if every jit cache hits.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time

import jax

from jaxal.experiment import compile_clock


class CompileCounter:
    """Backend compilations and their seconds (jaxal's compile clock, from JAX's monitoring
    events), broken down by program name (from JAX's compile log)."""

    def __init__(self) -> None:
        self.names: collections.Counter = collections.Counter()
        self.name_seconds: collections.Counter = collections.Counter()
        self._handler = _NameHandler(self.names, self.name_seconds)
        logging.getLogger("jax._src.dispatch").addHandler(self._handler)
        logging.getLogger("jax._src.interpreters.pxla").addHandler(self._handler)
        jax.config.update("jax_log_compiles", True)

    def snapshot(self) -> tuple[int, float, collections.Counter, collections.Counter]:
        return (compile_clock.compilations(), compile_clock.compile_seconds(), collections.Counter(self.names),
                collections.Counter(self.name_seconds))


class _NameHandler(logging.Handler):
    def __init__(self, names: collections.Counter, seconds: collections.Counter) -> None:
        super().__init__(level=logging.DEBUG)
        self.names, self.seconds = names, seconds

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names[msg.split()[1]] += 1
        elif msg.startswith("Finished XLA compilation of "):  # "... of jit(name) in 0.42 sec"
            words = msg.split()
            self.seconds[words[4]] += float(words[6])


def run_once(counter: CompileCounter, flags: list[str]) -> dict:
    from jaxal.cli import main

    c0, s0, names0, secs0 = counter.snapshot()
    out = tempfile.mkdtemp(prefix="jaxal-compile-")
    t0 = time.perf_counter()
    code = main(["run", "--quiet", "--out", os.path.join(out, "run")] + flags)
    wall = time.perf_counter() - t0
    c1, s1, names1, secs1 = counter.snapshot()
    if code != 0:
        raise SystemExit(f"jaxal run exited {code}")
    return {"compilations": c1 - c0, "compile_seconds": round(s1 - s0, 2), "wall_seconds": round(wall, 2),
            "compile_fraction": round((s1 - s0) / wall, 3), "by_program": dict((names1 - names0).most_common(25)),
            "seconds_by_program": {k: round(v, 2) for k, v in (secs1 - secs0).most_common(15)}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--twice", action="store_true")
    p.add_argument("--cache", default="off", help="persistent compilation cache directory (default: off)")
    args = p.parse_args(own)
    flags = flags + ["--compile-cache", args.cache]
    logging.basicConfig(level=logging.WARNING)
    counter = CompileCounter()
    hits = [0]
    jax.monitoring.register_event_listener(
        lambda name, **_: hits.__setitem__(0, hits[0] + (name == "/jax/compilation_cache/cache_hits")))
    result = {"flags": flags, "cache_hits": 0, "load_average_start": os.getloadavg(), "first": run_once(counter, flags)}
    if args.twice:
        result["second"] = run_once(counter, flags)
    result["load_average_end"] = os.getloadavg()
    result["cache_hits"] = hits[0]
    for k in ("first", "second"):
        if k in result:
            r = result[k]
            print(f"{k} run: {r['compilations']} compilations (persistent-cache hits so far: {hits[0]}), {r['compile_seconds']} s of {r['wall_seconds']} s "
                  f"({100 * r['compile_fraction']:.0f}%)", flush=True)
    print("most compiled:", ", ".join(f"{n} x{c}" for n, c in list(result["first"]["by_program"].items())[:12]))
    print("most compile time:", ", ".join(f"{n} {s} s" for n, s in list(result["first"]["seconds_by_program"].items())[:12]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
