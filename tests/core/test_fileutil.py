"""csr_vdb.fileutil: checksums of files and of a saved model, atomic writes that leave nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from csr_vdb import fileutil
from csr_vdb.fileutil import MODEL_FILES, atomic_write_bytes, atomic_write_json, model_checksum, sha256_file


def test_sha256_file_reads_in_chunks(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1024) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_model_checksum_covers_weights_and_config_by_name(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_report.json").write_text("{}")
    ref = model_checksum(tmp_path)
    assert len(ref) == 64 and MODEL_FILES == ("model.safetensors", "config.json")
    (tmp_path / "training_report.json").write_text('{"steps": 2}')
    assert model_checksum(tmp_path) == ref  # the report is not part of the model
    (tmp_path / "config.json").write_text('{"k": 2}')
    assert model_checksum(tmp_path) != ref
    # the same bytes under swapped names are another model
    (tmp_path / "config.json").write_text("{}")
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "model.safetensors").write_text("{}")
    (swapped / "config.json").write_bytes(b"w")
    assert model_checksum(swapped) != ref
    with pytest.raises(FileNotFoundError):
        model_checksum(tmp_path / "nothing")


def test_atomic_write_replaces_the_file_and_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temporary left behind
    atomic_write_json(tmp_path / "r.json", {"b": 1, "path": tmp_path})
    text = (tmp_path / "r.json").read_text()
    assert text.endswith("\n") and json.loads(text) == {"b": 1, "path": str(tmp_path)}


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileutil.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
