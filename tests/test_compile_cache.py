"""The command line's persistent compilation cache: where it lives, and that a second
process reuses what the first compiled (counted with JAX's own monitoring events)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from jaxal.experiment import compile_cache

COUNT = r"""
import json, sys, jax
events = {"compiles": 0, "cache_hits": 0}
def on_duration(name, seconds, **kw):
    if name == "/jax/core/compile/backend_compile_duration":
        events["compiles"] += 1
def on_event(name, **kw):
    if name == "/jax/compilation_cache/cache_hits":
        events["cache_hits"] += 1
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
from jaxal.cli import main
code = main(sys.argv[1:])
print("EVENTS" + json.dumps(events))
sys.exit(code)
"""


def test_settings_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXAL_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.resolve(None) == str(tmp_path / "c")
    assert compile_cache.resolve("off") is None and compile_cache.resolve("OFF") is None
    assert compile_cache.resolve(str(tmp_path / "d")) == str(tmp_path / "d")
    monkeypatch.delenv("JAXAL_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_directory() == str(tmp_path / "xdg" / "jaxal" / "xla")


def _run(tmp_path, cache, out):
    argv = ["run", "--strategy", "entropy", "--widths", "8", "--initial", "10", "--budget", "5", "--rounds", "1",
            "--epochs", "2", "--candidates", "40", "--quiet", "--compile-cache", str(cache), "--out", str(out)]
    env = {**os.environ, "JAXAL_COMPILE_CACHE": "off"}  # the flag must win over the environment
    done = subprocess.run([sys.executable, "-c", COUNT, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("EVENTS"))
    return json.loads(line[len("EVENTS"):])


def test_a_second_process_reuses_the_first_ones_compilations(tmp_path):
    cache = tmp_path / "xla"
    first = _run(tmp_path, cache, tmp_path / "a")
    assert first["compiles"] > 0 and first["cache_hits"] == 0
    assert any(cache.iterdir())  # executables were written
    second = _run(tmp_path, cache, tmp_path / "b")
    assert second["cache_hits"] > 0
    records_a = [json.loads(l) for l in open(tmp_path / "a" / "entropy" / "seed0" / "records.jsonl")]
    records_b = [json.loads(l) for l in open(tmp_path / "b" / "entropy" / "seed0" / "records.jsonl")]
    assert [r["chosen"] for r in records_a] == [r["chosen"] for r in records_b]
    assert [r["test_accuracy"] for r in records_a] == [r["test_accuracy"] for r in records_b]
