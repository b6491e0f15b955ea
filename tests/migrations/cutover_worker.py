"""Subprocess body for the interrupted cut-over tests: run `cutover` or `rollback` and SIGKILL this
process at a chosen point of it.

Usage: python -m tests.migrations.cutover_worker KIND URI STATE_BASE MODEL_DIR ACTION POINT

POINT: ``none`` (run to the end), ``before`` (right before the store moves the alias), ``inside``
(while the store moves it: Qdrant Edge between writing the new aliases file and renaming it into
place; the clients a few milliseconds into their request), ``after`` (the alias moved, the
cutover history not yet written).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    from csr_vdb import fileutil
    from csr_vdb.adapters import open_store
    from csr_vdb.migrations import MigrationPlan, cutover, rollback

    kind, uri, base, model_dir, action, point = argv[:6]
    store = open_store(kind, uri)
    plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir)
    set_alias = store.set_alias

    def interrupted_set_alias(alias: str, collection: str) -> None:
        if point == "before":
            _die()
        if point == "inside":
            if kind == "qdrant-edge":  # the new aliases.json is complete, its rename not done
                replace = os.replace

                def replace_then_die(src, dst):
                    if str(dst).endswith("aliases.json"):
                        _die()
                    return replace(src, dst)

                fileutil.os.replace = replace_then_die  # type: ignore[attr-defined]
                set_alias(alias, collection)
            else:  # a client request on its way: killed a few milliseconds into it
                threading.Thread(target=set_alias, args=(alias, collection), daemon=True).start()
                time.sleep(random.uniform(0.0, 0.02))
                _die()
        set_alias(alias, collection)
        if point == "after":
            _die()

    store.set_alias = interrupted_set_alias  # type: ignore[method-assign]
    run = cutover if action == "cutover" else rollback
    res = run(store, plan, state_base=base)
    store.close()
    print(f"{res.action} {res.previous} -> {res.current}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
