"""The comparison grid: every strategy × seed, resumable, with one progress view.

A comparison is a list of :class:`~jaxal.experiment.config.ExperimentConfig` that differ in their
strategy (and ``sequential`` flag) and seed. Each runs in ``out_dir/<label>/seed<k>``
(the ``jaxal run`` layout) where ``label`` is the strategy, plus ``-seq`` for the
sequential mode (:func:`jaxal.experiment.records.run_label`). At one seed every strategy starts
from the same initial labeled set and the same initial weights: the loop derives both
from the seed alone, so the comparison is paired.

Resuming is the default, not an option: a run whose checkpoint covers all its rounds
is skipped without loading anything; a run cut short (killed, interrupted, or with
more ``rounds`` asked for) continues from its checkpoint through
:func:`jaxal.experiment.loop.run` (``resume=True``), which draws exactly the keys an
uninterrupted run would. Before anything runs, every existing run directory is checked
against its config, so a changed setting fails at once instead of after hours.

Order: seed-major (all strategies at seed 0, then seed 1, ...), so a grid stopped
half-way already holds paired comparisons.

:func:`compare` = :func:`run_grid` + :func:`jaxal.experiment.report.write_report`.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Sequence

from jaxal.experiment import checkpoint as ckpt
from jaxal.experiment import records as ev
from jaxal.experiment.config import ExperimentConfig, check_same_run, validate
from jaxal.experiment.loop import CHECKPOINT_FILE, preflight, run
from jaxal.experiment.progress import progress_bar
from jaxal.experiment.report import Report, write_report

__all__ = ["GridRun", "label_of", "plan", "run_status", "check_grid", "run_grid", "compare"]

DONE, PARTIAL, NEW = "done", "partial", "new"


class GridRun(NamedTuple):
    """One cell of the grid.

    Attributes:
      label: the arm (strategy, ``-seq`` appended for the sequential mode).
      seed: the seed.
      config: its experiment config.
      run_dir: ``out_dir/<label>/seed<seed>``.
    """

    label: str
    seed: int
    config: ExperimentConfig
    run_dir: str


def label_of(config: ExperimentConfig) -> str:
    """The arm name of a config (see :func:`jaxal.experiment.records.run_label`)."""
    return ev.run_label({"strategy": config.strategy, "sequential": config.sequential, "label": config.label})


def plan(
    configs: Sequence[ExperimentConfig], out_dir: str | os.PathLike, labels: Sequence[str] | None = None
) -> list[GridRun]:
    """The grid's cells in seed-major order, each with its run directory.

    ``labels`` (one per config) name arms that :func:`label_of` cannot tell apart, e.g.
    start modes of one strategy; by default the label is the strategy (``-seq``).

    Raises ``ValueError`` for an empty grid or two configs with the same label and seed.
    """
    if not configs:
        raise ValueError("the grid is empty: give at least one strategy and one seed")
    if labels is not None and len(labels) != len(configs):
        raise ValueError(f"labels has {len(labels)} entries for {len(configs)} configs")
    out_dir = os.fspath(out_dir)
    order: dict[str, int] = {}
    cells: dict[tuple[str, int], GridRun] = {}
    for k, c in enumerate(configs):
        validate(c)
        label = label_of(c) if labels is None else str(labels[k])
        if not label or os.sep in label or label in (".", ".."):
            raise ValueError(f"label {label!r} cannot name a directory")
        order.setdefault(label, len(order))
        if (label, c.seed) in cells:
            raise ValueError(f"the grid lists {label!r} seed {c.seed} twice")
        cells[(label, c.seed)] = GridRun(label, c.seed, c, os.path.join(out_dir, label, f"seed{c.seed}"))
    return sorted(cells.values(), key=lambda r: (r.seed, order[r.label]))


def _stored_config(run_dir: str) -> dict | None:
    try:
        return ev.read_config(run_dir)
    except ValueError as e:
        raise ckpt.CheckpointError(f"{e}; move the run away or choose another --out") from e


def run_status(cell: GridRun) -> str:
    """``"done"`` (checkpoint covers every round), ``"partial"`` (something to resume)
    or ``"new"`` (nothing there yet)."""
    ck = os.path.join(cell.run_dir, CHECKPOINT_FILE)
    if not os.path.exists(ck):
        return PARTIAL if _stored_config(cell.run_dir) is not None else NEW
    last = ckpt.peek_round(ck)
    return DONE if last is not None and last >= cell.config.rounds else PARTIAL


def check_grid(cells: Sequence[GridRun]) -> None:
    """Refuse (``CheckpointError``, a ``ValueError``) run directories written by a
    different config, naming the differing settings, before any run starts."""
    for cell in cells:
        stored = _stored_config(cell.run_dir)
        if stored is None:
            continue
        check_same_run(stored, cell.config, cell.run_dir,
                       "use the same settings to resume this comparison, or another --out for a new one")


def _records_so_far(run_dir: str) -> int:
    try:
        return len(ev.load_records(run_dir))
    except ValueError:
        return 0


def run_grid(
    configs: Sequence[ExperimentConfig],
    out_dir: str | os.PathLike,
    *,
    progress: bool = False,
    on_event: Callable[[GridRun, str, int], None] | None = None,
    labels: Sequence[str] | None = None,
    datasets: dict | None = None,
) -> ev.Runs:
    """Run (or resume) every cell of the grid; skip finished ones.

    Every cell still to run is checked (:func:`jaxal.experiment.loop.preflight`) before
    the first one trains, so a bad arm fails the grid in seconds, not hours in.

    Args:
      configs: one config per (strategy / sequential flag, seed).
      out_dir: the comparison directory.
      progress: show one rich progress bar over every round of the grid.
      on_event: ``on_event(cell, event, round)``: ``"skipped"`` (round = last
        completed) for a finished run, then for runs that train the loop's events
        ``"queried"``, ``"trained"``, ``"recorded"``, ``"checkpointed"``.
      labels: one arm name per config (see :func:`plan`).
      datasets: the data-set cache to share (see :func:`jaxal.experiment.loop.run`);
        default: a new one for this grid.

    Returns:
      ``runs[label][seed] = records`` for every cell.
    """
    emit = on_event or (lambda cell, event, r: None)
    cells = plan(configs, out_dir, labels)
    check_grid(cells)
    status = [run_status(c) for c in cells]
    total = sum(c.config.rounds + 1 for c in cells)
    completed = sum(
        c.config.rounds + 1 if s == DONE else min(_records_so_far(c.run_dir), c.config.rounds + 1) if s == PARTIAL else 0
        for c, s in zip(cells, status)
    )
    results: ev.Runs = {}
    datasets = {} if datasets is None else datasets  # each data set loaded once for the whole grid
    for cell, st in zip(cells, status):
        if st != DONE:
            preflight(cell.config, datasets)
    runs = len(cells)
    with progress_bar(progress, f"grid 0/{runs} runs", total, completed=completed, unit="rounds", eta=True) as update:
        for k, (cell, st) in enumerate(zip(cells, status)):
            if st == DONE:
                records = ev.load_records(cell.run_dir)
                emit(cell, "skipped", int(records[-1]["round"]) if records else -1)
            else:
                name = f"{cell.label} seed {cell.seed}"
                update(status=name)

                def hook(event: str, r: int, _cell: GridRun = cell, _name: str = name) -> None:
                    emit(_cell, event, r)
                    if event == "checkpointed":
                        update(advance=1, status=f"{_name} round {r}")

                records = run(cell.config, cell.run_dir, resume=True, progress=False, on_event=hook,
                              datasets=datasets)
            results.setdefault(cell.label, {})[cell.seed] = records
            update(description=f"grid {k + 1}/{runs} runs")
    return results


def compare(
    configs: Sequence[ExperimentConfig],
    out_dir: str | os.PathLike,
    *,
    reference: str = "random",
    progress: bool = False,
    on_event: Callable[[GridRun, str, int], None] | None = None,
    title: str | None = None,
    datasets: dict | None = None,
) -> tuple[ev.Runs, Report]:
    """Run the grid (:func:`run_grid`) and write its evaluation into ``out_dir``
    (:func:`jaxal.experiment.report.write_report`: curves, differences to random, AUBC, penalty
    matrix, summary). Returns ``(runs, report)``."""
    runs = run_grid(configs, out_dir, progress=progress, on_event=on_event, datasets=datasets)
    return runs, write_report(runs, out_dir, reference=reference, title=title)
