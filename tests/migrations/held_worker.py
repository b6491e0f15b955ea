"""Subprocess body for the concurrency tests: a migration (the saved model's encoder) that holds its
lock for as long as the test wants.

Usage: python -m tests.migrations.held_worker KIND URI STATE_BASE MODEL_DIR BATCH_SIZE GATE

Every batch waits while the file GATE exists, so the run is certainly under way (lock held, journal
open) while the test tries what a second operator would; removing GATE lets it finish.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from csr_vdb.adapters import open_store
    from csr_vdb.migrations import MigrationPlan, run_migration
    from csr_vdb.model import CSREncoder

    kind, uri, base, model_dir, batch, gate = argv[:6]
    encoder = CSREncoder.load(model_dir, device="cpu")

    def encode(x):
        while Path(gate).exists():
            time.sleep(0.05)
        return encoder.encode(x)

    store = open_store(kind, uri)
    try:
        plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir,
                                    batch_size=int(batch))
        res = run_migration(store, plan, encode, state_base=base)
        print(f"done written={res.rows_written}", flush=True)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
