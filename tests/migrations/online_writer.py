"""A source writer for the online-migration tests: bursts of inserts, updates (vector only, payload
only, both) and deletes, run in a thread of the test (embedded engines admit one process) or in a
process of its own against a Milvus server.

Usage: python -m tests.migrations.online_writer URI COLLECTION ID_TYPE SEED
then one line per burst on stdin ("burst N"); each is answered on stdout ("done N") once written.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np

KINDS = ("insert", "vector", "payload", "both", "delete")


class SourceWriter:
    """Writes to a dense collection, like an application that keeps using it during a migration.

    Args:
        store: the open store.
        collection: the dense collection.
        id_type: "int" or "str".
        seed: the random ops' seed.
    """

    def __init__(self, store, collection: str, id_type: str, seed: int = 0) -> None:
        self.store, self.collection, self.id_type = store, collection, id_type
        self.rng = np.random.default_rng(seed)
        self.dim = store.describe(collection).dimension
        self.ids = [i for page in store.iter_payloads(collection, 1000, fields=[]) for i in page.ids]
        self.next_id = 0
        self.done: Counter = Counter()

    def _new_id(self):
        self.next_id += 1
        return 10_000_000 + self.next_id if self.id_type == "int" else f"live-{self.next_id:06d}"

    def _vectors(self, n: int) -> np.ndarray:
        x = self.rng.normal(size=(n, self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def burst(self, n: int) -> None:
        """``n`` random writes, one store call per kind."""
        kinds = Counter(self.rng.choice(KINDS, size=n).tolist())
        picked = list(self.rng.choice(len(self.ids), size=min(len(self.ids), n), replace=False))
        take = lambda k: [self.ids[j] for j in (picked.pop() for _ in range(min(k, len(picked))))]  # noqa: E731
        if kinds["insert"]:
            new = [self._new_id() for _ in range(kinds["insert"])]
            self.store.insert_dense(self.collection, new, self._vectors(len(new)),
                                    [{"text": f"added {i}", "live": True} for i in new])
            self.ids.extend(new)
        for kind in ("vector", "payload", "both"):
            rows = take(kinds[kind])
            if not rows:
                continue
            recs = {r.id: r for r in self.store.fetch(self.collection, rows, with_dense=True)}
            rows = [i for i in rows if i in recs]
            vectors = self._vectors(len(rows)) if kind != "payload" else np.stack([recs[i].dense for i in rows])
            payloads = [recs[i].payload if kind == "vector" else {**recs[i].payload, "edited": kind} for i in rows]
            if rows:
                self.store.insert_dense(self.collection, rows, vectors, payloads)
        gone = take(kinds["delete"])
        if gone:
            self.store.delete(self.collection, gone)
            dropped = set(gone)
            self.ids = [i for i in self.ids if i not in dropped]
        self.done.update(kinds)


def main(argv: list[str]) -> int:
    from csr_vdb.adapters import open_store

    uri, collection, id_type, seed = argv[:4]
    with open_store("milvus", uri) as store:
        writer = SourceWriter(store, collection, id_type, int(seed))
        print("ready", flush=True)
        for line in sys.stdin:
            n = int(line.split()[1])
            writer.burst(n)
            print(f"done {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
