"""Deprecated: moved to :mod:`jaxal.experiment.loop` / :mod:`jaxal.experiment.config` in jaxal 0.2 (removed in 0.3)."""

from jaxal._deprecated import merge

merge(__name__)
