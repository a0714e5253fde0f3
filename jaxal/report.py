"""Deprecated: moved to :mod:`jaxal.experiment.report` in jaxal 0.2 (removed in 0.3)."""

from jaxal._deprecated import alias

alias(__name__)
