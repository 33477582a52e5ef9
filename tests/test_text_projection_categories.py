"""Text projection with category heads (issue 20): words name the kind of product more surely than a
frozen photo space separates kinds; the heads carry that into the search by photo vectors."""

import numpy as np
import pytest

from skulens.catalog import text_projection
from skulens.catalog.text_projection import TextProjection
from skulens.errors import SkulensError


def _products(n: int, seed: int, classes: int = 6):
    """Photo vectors where the kind is a weak direction under strong product detail; texts that name the
    kind clearly and echo some of the detail (so the words can find the very product too)."""
    rng = np.random.default_rng(seed)
    kind_photo = np.random.default_rng(100).normal(size=(classes, 48))
    kind_text = np.random.default_rng(101).normal(size=(classes, 24))
    detail_to_text = np.random.default_rng(102).normal(size=(48, 24)) / 7
    labels = rng.integers(0, classes, n)
    detail = rng.normal(size=(n, 48))
    photos = 0.35 * kind_photo[labels] + detail
    texts = kind_text[labels] + detail @ detail_to_text + 0.3 * rng.normal(size=(n, 24))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(texts), unit(photos), labels


def _precision_and_recall(projection: TextProjection, texts, photos, labels) -> tuple[float, float]:
    top = np.argsort(-projection.scores(texts, photos), axis=1)[:, :10]
    return float((labels[top] == labels[:, None]).mean()), float((top == np.arange(len(texts))[:, None]).any(1).mean())


def _fit(texts, photos, labels, **kw):
    categories = [f"Kind {i}" for i in labels] if labels is not None else None
    return text_projection.fit(
        texts,
        photos,
        text_model="t",
        image_model="m",
        categories=categories,
        epochs=30,
        batch_size=128,
        lr=1e-2,
        progress=False,
        **kw,
    )


def test_category_heads_make_the_words_find_the_right_kind_of_product(tmp_path):
    texts, photos, labels = _products(800, seed=0)
    fitted = _fit(texts, photos, labels)
    assert fitted.heads is not None and fitted.mix > 0
    assert fitted.info["held_out"] == 80 and fitted.info["categories"] == 6
    assert [row["mix"] for row in fitted.info["mix_choice"]][0] == 0.0
    new_texts, new_photos, new_labels = _products(300, seed=1)  # products neither fit nor the mix saw
    with_heads = _precision_and_recall(fitted, new_texts, new_photos, new_labels)
    plain = _fit(texts, photos, None)
    assert plain.heads is None and plain.mix == 0.0
    without = _precision_and_recall(plain, new_texts, new_photos, new_labels)
    assert with_heads[0] >= without[0] + 0.1, (with_heads, without)
    assert sum(with_heads) > sum(without), (with_heads, without)  # the mix's own rule, on new products
    # saved and loaded: the same queries, and the digest covers the heads
    fitted.save(tmp_path / "p.safetensors")
    loaded = TextProjection.load(tmp_path / "p.safetensors")
    assert loaded.heads.categories == [f"Kind {i}" for i in range(6)] and loaded.mix == fitted.mix
    np.testing.assert_allclose(loaded.scores(new_texts, new_photos), fitted.scores(new_texts, new_photos), atol=1e-6)
    assert loaded.digest == fitted.digest != plain.digest


def test_too_few_labelled_pairs_or_categories_fit_the_plain_projection():
    texts, photos, labels = _products(60, seed=2)
    few = _fit(texts, photos, labels)  # 6 held out < 20: nothing to choose the mix on
    assert few.heads is None and few.mix == 0.0
    texts, photos, labels = _products(400, seed=3)
    one_kind = text_projection.fit(
        texts, photos, text_model="t", image_model="m", categories=["Only"] * 400, epochs=2, progress=False
    )
    assert one_kind.heads is None
    chosen_by_hand = _fit(texts, photos, labels, mix=0.3)
    assert chosen_by_hand.mix == 0.3 and len(chosen_by_hand.info["mix_choice"]) > 1
    with pytest.raises(SkulensError, match="mix must be between"):
        _fit(texts, photos, labels, mix=-1.0)
    with pytest.raises(SkulensError, match="categories for"):
        text_projection.fit(texts, photos, text_model="t", image_model="m", categories=["a", "b"], progress=False)


def test_heads_score_by_the_log_agreement_and_older_heads_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    texts, photos, labels = _products(400, seed=4)
    fitted = _fit(texts, photos, labels, mix=0.05)
    heads = fitted.heads
    assert heads.image_hidden_weight.shape == (text_projection.PROBE_HIDDEN, photos.shape[1])
    agreement = heads.agreement(texts[:5], photos)
    assert 0 <= agreement.min() and agreement.max() <= 1 + 1e-5  # a probability per (text, photo)
    cosine = fitted.apply(texts[:5]) @ photos.T
    expected = cosine + 0.05 * np.log(np.maximum(agreement, text_projection.AGREEMENT_FLOOR))
    np.testing.assert_allclose(fitted.scores(texts[:5], photos), expected, atol=1e-5)
    # a file whose heads were scored in probabilities (no format mark) is not read with another meaning
    fitted.save(tmp_path / "new.safetensors")
    tensors = {k: v for k, v in fitted.heads.tensors().items() if "hidden" not in k and "image_category_bias" != k}
    meta = {"text_model": "t", "image_model": "m", "categories": '["Kind 0", "Kind 1"]', "mix": "0.05"}
    save_file({"weight": fitted.weight, "bias": fitted.bias, **tensors}, str(tmp_path / "old.safetensors"), meta)
    with pytest.raises(SkulensError, match="earlier skulens.*fit it again"):
        TextProjection.load(tmp_path / "old.safetensors")
