"""The store contract, re-exported where adapters and older code import it from.

It lives in the core, `csr_vdb.store` (the protocol, the records that cross it, the id and
payload checks, the URI helpers); this module keeps ``csr_vdb.adapters.base`` imports working.
"""

from __future__ import annotations

from csr_vdb.store import *  # noqa: F403 - the whole contract, by its __all__
from csr_vdb.store import __all__  # noqa: F401
