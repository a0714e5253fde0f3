"""Query strategies, each a pure function registered by name.

Importing this package registers every built-in strategy; see :mod:`jaxal.strategies.base`
for the protocol. Each family lives in its own module.
"""

from jaxal.strategies.base import Context, Query, get, names, register, select  # noqa: F401

# Each module below registers its strategies on import. Keep one line per family.
from jaxal.strategies import uncertainty  # noqa: F401,E402
from jaxal.strategies import crc  # noqa: F401,E402
from jaxal.strategies import badge  # noqa: F401,E402
from jaxal.strategies import coreset  # noqa: F401,E402
from jaxal.strategies import typiclust  # noqa: F401,E402
from jaxal.strategies import bald  # noqa: F401,E402
from jaxal.strategies import egl  # noqa: F401,E402
from jaxal.strategies import albl  # noqa: F401,E402
from jaxal.strategies import lookahead  # noqa: F401,E402
