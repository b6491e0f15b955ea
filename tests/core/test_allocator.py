"""csr_vdb.allocator: the glibc thresholds are set once, the heap is trimmed on schedule, no-ops without glibc."""

from __future__ import annotations

import pytest
import torch

from csr_vdb import allocator
from csr_vdb.training import train_encoder
from tests.helpers import clustered, fast_train, tiny_config

torch.set_num_threads(1)


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    lib = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: lib)
    allocator.tune_heap_for_training.cache_clear()
    yield lib
    allocator.tune_heap_for_training.cache_clear()


def test_thresholds_are_set_once_per_process(fake_libc):
    assert allocator.tune_heap_for_training() is True
    assert allocator.tune_heap_for_training() is True
    assert fake_libc.calls == [
        ("mallopt", -3, allocator.MMAP_THRESHOLD),  # M_MMAP_THRESHOLD
        ("mallopt", -1, allocator.TRIM_THRESHOLD),  # M_TRIM_THRESHOLD
    ]
    assert allocator.MMAP_THRESHOLD == 64 << 20 and allocator.TRIM_THRESHOLD == 512 << 20


def test_release_free_heap_trims(fake_libc):
    assert allocator.release_free_heap() is True
    assert fake_libc.calls == [("malloc_trim", 0)]


def test_without_glibc_both_are_no_ops(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    allocator.tune_heap_for_training.cache_clear()
    try:
        assert allocator.tune_heap_for_training() is False
        assert allocator.release_free_heap() is False
    finally:
        allocator.tune_heap_for_training.cache_clear()


def test_the_real_c_library_is_found_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert allocator._glibc() is not None


def test_training_trims_the_heap_every_few_steps_and_at_the_end(monkeypatch):
    trims = []
    monkeypatch.setattr(allocator, "RELEASE_HEAP_EVERY", 2)
    monkeypatch.setattr(allocator, "release_free_heap", lambda: trims.append(1) or True)
    x, _ = clustered(300, 8)
    res = train_encoder(x, tiny_config(), fast_train(epochs=1, batch_size=60, max_steps=5, val_fraction=0.0))
    assert res.report["steps"] == 5
    assert len(trims) == 5 // 2 + 1  # steps 2 and 4, then once after training
