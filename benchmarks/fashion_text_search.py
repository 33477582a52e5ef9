"""fashion-small: text search, words through photos, photos refined by a colour word, and similar
products (issue 20).

    .venv/bin/python benchmarks/fashion_text_search.py [--img-size 128] [--sample 500]

The catalog is the train products (titles, 3-level tree, colour / usage / gender), photos embedded by
the pretrained EfficientNet-Lite0 (the default embedder of a new catalog), words by all-MiniLM-L6-v2.
Held-out queries come from the test split, whose products are not in that catalog; val is for choices.

1. Ingest cost: products per second, and the sentence vectors' own cost.
2. Text search: query = a test product's title; precision@10 of the same article_type, and of the
   same article_type + colour family, for lexical (BM25), semantic (sentence vectors) and hybrid.
3. Words through photos: the val and the test products each in a catalog of their own, by photo
   only (no words at all); query = each product's title. A text projection fitted on the train
   catalog (temperature chosen on val) against a baseline that matches the query's words to
   attributes predicted from the photo (logistic regression on the train photos' vectors):
   Recall@1/10 of the exact product, precision@10 of its article_type / colour family / gender.
4. Photo + colour word: query = a test photo + "in <family>" for a family other than its own;
   precision@10 of products with the photo's article_type in the asked family, against photo only.
5. Similar products: share of the 5 most similar in the product's own article_type, by look alone
   and tree first (`Catalog.similar(sku, tree=...)`), over --sample catalog products.
6. Latency of a text query once the val and test products are in too (22,123 products): p50 / p95.
Saves benchmarks/results/fashion_text_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from skulens.catalog import Catalog, CsvMapping, Embedder, import_products, read_products_csv
from skulens.catalog.products import Product
from skulens.data.colour_families import family_of

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-small" / "products.csv"
RESULTS = Path(__file__).resolve().parent / "results"
MAPPING = CsvMapping(tree=["master_category", "sub_category", "article_type"], attributes=["colour", "usage", "gender"])
ASKED = ["Blue", "Black", "White", "Red", "Green", "Grey", "Pink", "Brown"]  # families a shopper asks for


def _family(hit_or_product) -> str:
    return family_of(str(hit_or_product.attributes.get("colour", "")))


def ingest(catalog: Catalog, rows: list, desc: str) -> dict:
    started = time.perf_counter()
    report = import_products(catalog, rows, desc=desc)
    seconds = time.perf_counter() - started
    return {"products": report.added, "seconds": round(seconds, 1), "products_per_s": round(report.added / seconds, 1)}


def text_precision(catalog: Catalog, queries: list, mode: str) -> dict:
    same_type, same_both = [], []
    for _, product in queries:
        hits = catalog.search(text=product.title, top_k=10, mode=mode)
        same_type.append(np.mean([h.category_path[-1] == product.category_path[-1] for h in hits] or [0]))
        same_both.append(
            np.mean(
                [h.category_path[-1] == product.category_path[-1] and _family(h) == _family(product) for h in hits]
                or [0]
            )
        )
    return {"article_type_p@10": float(np.mean(same_type)), "article_type_and_family_p@10": float(np.mean(same_both))}


def photo_and_colour(catalog: Catalog, queries: list) -> dict:
    """precision@10 of (the photo's article_type and the asked family), with the words and without."""
    refined, plain = [], []
    for i, (_, product) in enumerate(queries):
        asked = next(f for f in ASKED[i % len(ASKED) :] + ASKED if f != _family(product))
        for out, text in ((refined, f"in {asked.lower()}"), (plain, None)):
            hits = catalog.search(product.images[0], top_k=10, text=text)
            out.append(
                np.mean([h.category_path[-1] == product.category_path[-1] and _family(h) == asked for h in hits])
            )
    return {"photo_and_words_p@10": float(np.mean(refined)), "photo_only_p@10": float(np.mean(plain))}


def similar_share(catalog: Catalog, rows: list, tree: bool) -> float:
    shares = []
    for _, product in rows:
        hits = catalog.similar(product.sku, top_k=5, tree=tree)
        shares.append(np.mean([h.category_path[-1] == product.category_path[-1] for h in hits] or [0]))
    return float(np.mean(shares))


def latency(catalog: Catalog, titles: list[str], mode: str) -> dict:
    catalog.search(text=titles[0], mode=mode)  # the index and the model, loaded once
    times = []
    for title in titles:
        started = time.perf_counter()
        catalog.search(text=title, top_k=10, mode=mode)
        times.append(1000 * (time.perf_counter() - started))
    return {"p50_ms": round(float(np.percentile(times, 50)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--img-size", type=int, default=128, help="pretrained embedder input size")
    p.add_argument("--sample", type=int, default=500, help="queries per measurement (a fixed random sample)")
    p.add_argument("--limit", type=int, default=None, help="only the first N products of each split (a smoke run)")
    p.add_argument("--out", default=str(RESULTS / "fashion_text_search.json"))
    args = p.parse_args()
    embedder = Embedder.pretrained("efficientnet_lite0", img_size=args.img_size, device="cpu")
    rows = {s: read_products_csv(Path(args.csv), MAPPING, split=s)[0][: args.limit] for s in ("train", "val", "test")}
    rng = random.Random(0)
    test_sample = rng.sample(rows["test"], min(args.sample, len(rows["test"])))
    results: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "embedder": embedder.description,
        "queries": len(test_sample),
    }
    with tempfile.TemporaryDirectory() as tmp, Catalog.open(Path(tmp) / "fashion.db", embedder) as catalog:
        results["ingest"] = ingest(catalog, rows["train"], "ingesting train")
        started = time.perf_counter()
        catalog.text.index()  # the first search by meaning: every product's sentence vector
        results["text_index_first_build_s"] = round(time.perf_counter() - started, 1)
        results["text_vectors_only"] = _text_vector_cost(rows["train"][:2000])
        for mode in ("lexical", "semantic", "hybrid"):
            results[f"text_{mode}"] = text_precision(catalog, test_sample, mode)
            print(mode, results[f"text_{mode}"], flush=True)
        results["words_through_photos"] = words_through_photos(catalog, embedder, rows, Path(tmp), args.sample)
        results["photo_and_colour_word"] = photo_and_colour(catalog, test_sample)
        print("photo + colour word", results["photo_and_colour_word"], flush=True)
        sample = rng.sample(rows["train"], min(args.sample, len(rows["train"])))
        results["similar_article_type_share@5"] = {
            "by_look": similar_share(catalog, sample, tree=False),
            "tree_first": similar_share(catalog, sample, tree=True),
        }
        print("similar", results["similar_article_type_share@5"], flush=True)
        ingest(catalog, rows["val"] + rows["test"], "ingesting val + test")
        results["latency_22k"] = {
            "products": len(catalog),
            **{mode: latency(catalog, [p.title for _, p in test_sample[:200]], mode) for mode in ("lexical", "hybrid")},
        }
        print("latency", results["latency_22k"], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


def words_through_photos(catalog: Catalog, embedder, rows: dict, tmp: Path, sample: int) -> dict:
    """Section 3: val and test products by photo only; the projection's temperature chosen on val."""
    bare = {}
    for split in ("val", "test"):
        bare[split] = Catalog.open(tmp / f"bare-{split}.db", embedder)
        photos_only = [(n, Product(p.sku, images=p.images)) for n, p in rows[split]]
        ingest(bare[split], photos_only, f"{split} by photo only")
    truth = {split: {p.sku: p for _, p in rows[split]} for split in ("val", "test")}
    out: dict = {"val": {}, "test": {}}
    probe = AttributeProbe(catalog, rows["train"])
    for split in ("val", "test"):
        out[split]["baseline"] = score_words(bare[split], truth[split], sample, probe.ranking(bare[split]))
    best = None
    for temperature in (0.03, 0.05, 0.1):
        path = tmp / f"words-{temperature}.safetensors"
        catalog.fit_text_projection(path, temperature=temperature, progress=False)
        bare["val"].use_text_projection(path)
        figures = score_words(bare["val"], truth["val"], sample)
        out["val"][f"projection t={temperature}"] = figures
        print("val", temperature, figures, flush=True)
        if best is None or figures["recall@10"] > best[1]["recall@10"]:
            best = (temperature, figures, path)
    bare["test"].use_text_projection(best[2])
    out["chosen_temperature"] = best[0]
    out["test"]["projection"] = score_words(bare["test"], truth["test"], sample)
    print("test", out["test"], flush=True)
    for one in bare.values():
        one.close()
    return out


def score_words(bare: Catalog, truth: dict, sample: int, ranking=None) -> dict:
    """Recall@1/10 of the product whose title is the query, precision@10 of its article_type, colour
    family and gender, over ``sample`` products of ``bare`` (``ranking``: the baseline's, else search)."""
    skus = random.Random(1).sample(sorted(truth), min(sample, len(truth)))
    r1, r10, same_type, same_family, same_gender = [], [], [], [], []
    for sku in skus:
        product = truth[sku]
        found = ranking(product.title) if ranking else [h.sku for h in bare.search(text=product.title, top_k=10)]
        r1.append(found[:1] == [sku])
        r10.append(sku in found[:10])
        others = [truth[f] for f in found[:10]]
        same_type.append(np.mean([o.category_path[-1] == product.category_path[-1] for o in others] or [0]))
        same_family.append(np.mean([_family(o) == _family(product) for o in others] or [0]))
        gender = product.attributes.get("gender")
        same_gender.append(np.mean([o.attributes.get("gender") == gender for o in others] or [0]))
    return {
        "recall@1": float(np.mean(r1)),
        "recall@10": float(np.mean(r10)),
        "article_type_p@10": float(np.mean(same_type)),
        "colour_family_p@10": float(np.mean(same_family)),
        "gender_p@10": float(np.mean(same_gender)),
    }


class AttributeProbe:
    """The baseline: attributes predicted from the photo vectors (logistic regression fitted on the
    train catalog's), ranked by how many query words name them (ties: the probe's confidence)."""

    FIELDS = ("article_type", "colour", "gender")

    def __init__(self, catalog: Catalog, train_rows: list):
        from sklearn.linear_model import LogisticRegression

        vectors = np.stack([catalog.stored_vectors(p.sku)[0] for _, p in train_rows])
        self.models = {}
        for name in self.FIELDS:
            labels = [_field(p, name) for _, p in train_rows]
            self.models[name] = LogisticRegression(max_iter=300).fit(vectors, labels)

    def ranking(self, bare: Catalog):
        skus = [h.sku for h in bare.products(limit=100_000)]
        vectors = np.stack([bare.stored_vectors(sku)[0] for sku in skus])
        predicted = {name: model.predict(vectors) for name, model in self.models.items()}
        confidence = np.mean([model.predict_proba(vectors).max(axis=1) for model in self.models.values()], axis=0)
        words_of = [" ".join(str(predicted[n][i]) for n in self.FIELDS).lower().split() for i in range(len(skus))]

        def rank(query: str) -> list[str]:
            asked = set(query.lower().replace("-", " ").split())
            score = [len(asked & set(w)) + 0.01 * c for w, c in zip(words_of, confidence)]
            return [skus[i] for i in np.argsort(score)[::-1][:10]]

        return rank


def _field(product, name: str) -> str:
    return product.category_path[-1] if name == "article_type" else str(product.attributes.get(name, ""))


def _text_vector_cost(rows: list) -> dict:
    """Sentence vectors alone: what text search adds to an import, per product."""
    from skulens.catalog.text_search import document
    from skulens.models.text_encoder import load_text_encoder

    encoder = load_text_encoder()
    texts = [document(p.title, p.description, p.category_path, p.attributes) for _, p in rows]
    started = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - started
    return {"products": len(texts), "seconds": round(seconds, 1), "products_per_s": round(len(texts) / seconds, 1)}


if __name__ == "__main__":
    main()
