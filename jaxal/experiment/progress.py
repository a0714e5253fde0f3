"""The one progress bar of the experiment runners (a single run, or a grid of runs).

Both show rich's bar with a free-text status column; a disabled bar is a no-op with
the same interface, so the runners never test whether progress is on.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar"]

Update = Callable[..., None]


@contextlib.contextmanager
def progress_bar(
    enabled: bool,
    description: str,
    total: int,
    *,
    completed: int = 0,
    unit: str | None = None,
    eta: bool = False,
    transient: bool = False,
) -> Iterator[Update]:
    """Yield ``update(advance=0, status=None, description=None)`` driving one rich bar.

    Args:
      enabled: show the bar; when False ``update`` does nothing.
      description: the text left of the bar (``update(description=...)`` changes it).
      total: steps of a full bar.
      completed: steps already done (a resumed grid starts part-way).
      unit: a word after the ``done/total`` count (e.g. ``rounds``).
      eta: show the estimated time remaining.
      transient: clear the bar when done.
    """
    if not enabled:
        yield lambda advance=0, status=None, description=None: None
        return
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=completed, status="")

        def update(advance: int = 0, status: str | None = None, description: str | None = None) -> None:
            kw: dict[str, Any] = {"advance": advance}
            if status is not None:
                kw["status"] = status
            if description is not None:
                kw["description"] = description
            bar.update(task, **kw)

        yield update
