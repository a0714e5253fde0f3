"""Query strategies, each a pure function registered by name.

Importing this package registers every built-in strategy; see :mod:`jaxal.strategies.base`
for the protocol. Each family lives in its own module.
"""

from jaxal.strategies.base import Context, Query, get, names, register, select  # noqa: F401

# Each module below registers its strategies on import. Keep one line per family.
from jaxal.strategies import uncertainty  # noqa: F401,E402
