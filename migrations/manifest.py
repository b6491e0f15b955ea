"""The manifest: per source row, a hash of the dense vector and of the payload the target holds.

A migration records it in its journal with each batch (same transaction, after the write was
acknowledged); `csr_vdb.migrations.sync` compares the source with it, so finding what changed
never reads the target, and its writes follow the size of the change.

Keys are the JSON of the id (``5`` and ``"5"`` differ). The vector hash covers the float32 bytes
as the source returns them; the payload hash covers canonical JSON (sorted keys, no spaces), in
which ``1``, ``1.0``, ``"1"`` and ``true`` all differ, so a retyped value counts as a change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from csr_vdb.migrations.journal import Journal

DIGEST_BYTES = 16
_CHUNK = 500  # ids per SQL statement (well under sqlite's variable limit)


def id_key(id_: Any) -> str:
    """The manifest key of an id (its JSON)."""
    return str(id_) if type(id_) is int else json.dumps(id_)


def payload_digest(payload: dict[str, Any]) -> bytes:
    """Hash of a payload's canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).digest()


def row_digests(vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """``(vector hash, payload hash)`` per row of ``vectors [n, dim]`` and their payloads."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return [
        (hashlib.blake2b(row.tobytes(), digest_size=DIGEST_BYTES).digest(), payload_digest(p))
        for row, p in zip(x, payloads)
    ]


def manifest_rows(ids: Sequence[Any], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    """What a journal records for written rows: ``(key, vector hash, payload hash)``."""
    return [(id_key(i), vh, ph) for i, (vh, ph) in zip(ids, row_digests(vectors, payloads))]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for a in range(0, len(items), size):
        yield items[a : a + size]


class Manifest:
    """Reads of a journal's manifest, and the scratch table of ids one sync has seen in the source.

    The scratch table is a TEMP table of the journal's connection: it works on a read-only journal
    (dry run) and never touches the journal file.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.present = bool(journal.read("SELECT 1 FROM sqlite_master WHERE type='table' AND name='manifest'"))
        journal.scratch("CREATE TEMP TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID")
        journal.scratch("DELETE FROM temp.seen")

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[bytes, bytes]]:
        """The recorded ``(vector hash, payload hash)`` of these keys (absent keys left out)."""
        if not self.present:
            return {}
        out: dict[str, tuple[bytes, bytes]] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            for k, vh, ph in self.journal.read(
                f"SELECT id, vector_sha, payload_sha FROM manifest WHERE id IN ({marks})", tuple(chunk)
            ):
                out[k] = (bytes(vh), bytes(ph))
        return out

    def count(self) -> int:
        """Rows recorded."""
        return int(self.journal.read("SELECT COUNT(*) FROM manifest")[0][0]) if self.present else 0

    def mark_seen(self, keys: Sequence[str]) -> None:
        """Note ids met in the source during this sync."""
        self.journal.scratch("INSERT OR IGNORE INTO temp.seen(id) VALUES (?)", [(k,) for k in keys], many=True)

    def seen(self, keys: Sequence[str]) -> set[str]:
        """Which of these keys this sync has met in the source."""
        out: set[str] = set()
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            out.update(r[0] for r in self.journal.read(f"SELECT id FROM temp.seen WHERE id IN ({marks})", tuple(chunk)))
        return out

    def unseen(self) -> list[str]:
        """Recorded keys this sync has not met in the source: rows deleted from it."""
        if not self.present:
            return []
        rows = self.journal.read("SELECT id FROM manifest WHERE id NOT IN (SELECT id FROM temp.seen) ORDER BY id")
        return [r[0] for r in rows]

    def invalid_keys(self) -> set[str]:
        """Keys of the rows recorded as skipped (invalid vectors)."""
        return {r[0] for r in self.journal.read("SELECT id FROM invalid")}

    def unseen_invalid(self) -> list[str]:
        """Keys recorded as skipped that the source no longer holds."""
        return [r[0] for r in self.journal.read("SELECT id FROM invalid WHERE id NOT IN (SELECT id FROM temp.seen)")]
