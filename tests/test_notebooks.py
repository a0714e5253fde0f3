"""Every notebook (Jupytext percent-format script) runs in quick mode and writes its figure."""

import os
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_the_three_notebooks_are_there():
    assert [p.stem for p in SCRIPTS][:3] == ["01_quickstart", "02_lookahead_vs_retraining", "03_crc_spectrum"]
    for p in SCRIPTS:
        text = p.read_text()
        assert "# %% [markdown]" in text and 'QUICK = os.environ.get("JAXAL_NOTEBOOK_QUICK") == "1"' in text


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_notebook_runs_quick_and_writes_its_figure(script, tmp_path):
    env = {**os.environ, "JAXAL_NOTEBOOK_QUICK": "1", "JAXAL_NOTEBOOK_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figure = tmp_path / f"{script.stem}.png"
    data = figure.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
