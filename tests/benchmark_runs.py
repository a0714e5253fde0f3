"""Run a benchmark script's --quick mode and read its JSON: shared by the
``test_benchmarks_quick*.py`` files (split in three so that pytest-xdist, which hands
out whole files, runs them in parallel)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def run_quick(script: str, tmp_path) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())
