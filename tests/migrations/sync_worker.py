"""Subprocess body of the sync crash test: sync the migration of "docs" (found in the state folder).

Usage: python -m tests.migrations.sync_worker KIND URI STATE_BASE [DELAY_S]

DELAY_S paces each batch's encoding, so that the test's kill lands while the sync is under way.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from csr_vdb.adapters import open_store
    from csr_vdb.migrations import find_plan, sync_migration
    from tests.helpers import ProjectionEncoder, paced

    kind, uri, base = argv[:3]
    delay = float(argv[3]) if len(argv) > 3 else 0.0
    plan = find_plan(base, kind, uri, "docs")
    encode = paced(ProjectionEncoder(plan.source_schema.dim), delay)
    with open_store(kind, uri) as store:
        res = sync_migration(store, plan, encode, state_base=base)
    print(f"done {res.status} changes={res.changes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
