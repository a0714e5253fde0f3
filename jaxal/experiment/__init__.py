"""Running and reading active-learning experiments.

- :mod:`~jaxal.experiment.loop`: the round loop (train, query, label), resumable.
- :mod:`~jaxal.experiment.protocols`: named training protocols (``standard``, ``lookahead``).
- :mod:`~jaxal.experiment.checkpoint`: the crash-safe checkpoint format.
- :mod:`~jaxal.experiment.grid`: a grid of runs (strategies × seeds) sharing one directory.
- :mod:`~jaxal.experiment.records`: reading runs' records into learning curves.
- :mod:`~jaxal.experiment.stats`: AUBC, confidence intervals, paired tests, penalty matrix.
- :mod:`~jaxal.experiment.report`: the Markdown/CSV/PNG report of a grid.
"""

from jaxal.experiment.loop import ExperimentConfig, RunExistsError, run, validate  # noqa: F401
