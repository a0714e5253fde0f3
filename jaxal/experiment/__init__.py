"""Running and reading active-learning experiments.

Running:

- :mod:`~jaxal.experiment.config`: a run's settings (:class:`ExperimentConfig`) and their checks.
- :mod:`~jaxal.experiment.protocols`: named training protocols (``standard``, ``lookahead``).
- :mod:`~jaxal.experiment.loop`: the round loop (train, query, label) as a resumable state machine.
- :mod:`~jaxal.experiment.checkpoint`: the crash-safe checkpoint format.
- :mod:`~jaxal.experiment.progress`: the progress bar of a run and of a grid.
- :mod:`~jaxal.experiment.grid`: a grid of runs (strategies × seeds) sharing one directory.
- :mod:`~jaxal.experiment.compile_cache`: JAX's persistent compilation cache (on for the CLI).
- :mod:`~jaxal.experiment.compile_clock`: seconds spent compiling, recorded apart from run times.

Reading:

- :mod:`~jaxal.experiment.records`: runs' records into learning curves and AUBC tables.
- :mod:`~jaxal.experiment.stats`: AUBC, confidence intervals, the paired t-test, the penalty matrix.
- :mod:`~jaxal.experiment.plots`: the figures (matplotlib).
- :mod:`~jaxal.experiment.report`: the Markdown/CSV/PNG report of a grid.
"""

from jaxal.experiment.config import ExperimentConfig, validate  # noqa: F401
from jaxal.experiment.loop import RunExistsError, run  # noqa: F401
