"""Subprocess body for the crash tests: (re)plan and run one migration, resuming when a journal exists.

Usage: python -m tests.migrations.crash_worker KIND URI STATE_BASE MODEL_DIR BATCH_SIZE
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from csr_vdb.adapters import open_store
    from csr_vdb.migrations import JOURNAL_FILE, MigrationPlan, run_migration, state_dir
    from tests.migrations.conftest import ProjectionEncoder

    kind, uri, base, model_dir, batch = argv[:5]
    store = open_store(kind, uri)
    try:
        info = store.describe("docs")
        plan = MigrationPlan.create(
            store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir, batch_size=int(batch)
        )
        resume = (state_dir(base, plan) / JOURNAL_FILE).exists()
        res = run_migration(store, plan, ProjectionEncoder(info.dimension), state_base=base, resume=resume)
        print(f"done written={res.rows_written} total={res.rows_done}", flush=True)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
