"""Subprocess body for the crash tests: (re)plan and run one migration, resuming when a journal exists.

Usage: python -m tests.migrations.crash_worker KIND URI STATE_BASE MODEL_DIR BATCH_SIZE [DELAY_S]

DELAY_S paces each batch's encoding, so that on a fast idle machine the run is still under way
when the test's kill lands.
"""

from __future__ import annotations

import sys


def migrate(kind: str, uri: str, base: str, model_dir: str, batch: int, encode) -> None:
    """(Re)plan and run the migration of "docs", resuming when a journal exists; ``encode(x)``."""
    from csr_vdb.adapters import open_store
    from csr_vdb.migrations import JOURNAL_FILE, MigrationPlan, run_migration, state_dir

    store = open_store(kind, uri)
    try:
        plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir,
                                    batch_size=batch)
        resume = (state_dir(base, plan) / JOURNAL_FILE).exists()
        res = run_migration(store, plan, encode, state_base=base, resume=resume)
        print(f"done written={res.rows_written} total={res.rows_done}", flush=True)
    finally:
        store.close()


def main(argv: list[str]) -> int:
    from csr_vdb.adapters import open_store
    from tests.helpers import ProjectionEncoder, paced

    kind, uri, base, model_dir, batch = argv[:5]
    delay = float(argv[5]) if len(argv) > 5 else 0.0
    store = open_store(kind, uri)
    try:
        encoder = ProjectionEncoder(store.describe("docs").dimension)
    finally:
        store.close()

    migrate(kind, uri, base, model_dir, int(batch), paced(encoder, delay))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
