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
    from csr_vdb.model import CSREncoder
    from tests.migrations.crash_worker import migrate

    kind, uri, base, model_dir, batch, gate = argv[:6]
    encoder = CSREncoder.load(model_dir, device="cpu")

    def encode(x):
        while Path(gate).exists():
            time.sleep(0.05)
        return encoder.encode(x)

    migrate(kind, uri, base, model_dir, int(batch), encode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
