"""Search quality: Recall@k and mAP when each query has one right product (a SKU), precision@k
when relevance is "same category / same attributes" (e.g. fashion: same article type and colour)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from skulens.catalog.store import Catalog


@dataclass
class Query:
    image: str
    sku: str | None = None  # the right product, when there is exactly one
    category_leaf: str | None = None
    attributes: dict = field(default_factory=dict)


def average_precision(ranked_relevance: list[bool], n_relevant: int) -> float:
    """AP over a ranked list; relevant items missing from the list count as never retrieved."""
    if n_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, relevant in enumerate(ranked_relevance, start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / n_relevant


def evaluate_search(
    catalog: Catalog,
    queries: list[Query],
    *,
    ks: tuple[int, ...] = (1, 5, 10),
    match_attributes: tuple[str, ...] = (),
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Embeds the queries with the catalog's embedder and ranks products for each.

    With SKUs: ``recall@k`` (the right product among the first k) and ``mAP`` (one relevant product
    per query, so AP = 1/rank; ranked over the whole catalog up to 100 products).
    Always: ``precision@k_category`` (share of the first k with the query's category leaf) and, with
    ``match_attributes``, the same for category and those attributes together.
    """
    embedder = catalog._require_embedder()
    depth = max(max(ks), 100 if any(q.sku for q in queries) else max(ks))
    depth = min(depth, max(1, len(catalog)))
    recall_hits = {k: 0 for k in ks}
    aps, prec_cat, prec_attr = [], {k: [] for k in ks}, {k: [] for k in ks}
    n_sku, unreadable = 0, 0
    bar = tqdm(total=len(queries), desc="searching", unit="query", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        vectors, errors = embedder.embed_many([q.image for q in chunk], batch_size=batch_size)
        for query, vector, error in zip(chunk, vectors, errors):
            bar.update(1)
            if error:
                unreadable += 1
                continue
            hits = catalog.search_vectors(vector[None], top_k=depth, fetch=depth * 4)
            if query.sku is not None:
                n_sku += 1
                ranked = [h.sku == query.sku for h in hits]
                for k in ks:
                    recall_hits[k] += any(ranked[:k])
                aps.append(average_precision(ranked, 1))
            if query.category_leaf is not None:
                for k in ks:
                    top = hits[:k]
                    same_cat = [bool(h.category_path) and h.category_path[-1] == query.category_leaf for h in top]
                    prec_cat[k].append(float(np.mean(same_cat)) if top else 0.0)
                    if match_attributes:
                        same = [
                            c and all(h.attributes.get(a) == query.attributes.get(a) for a in match_attributes)
                            for c, h in zip(same_cat, top)
                        ]
                        prec_attr[k].append(float(np.mean(same)) if top else 0.0)
    bar.close()
    out: dict = {"queries": len(queries), "unreadable": unreadable, "catalog_products": len(catalog)}
    if n_sku:
        out.update({f"recall@{k}": recall_hits[k] / n_sku for k in ks})
        out["mAP"] = float(np.mean(aps))
    if any(prec_cat[k] for k in ks):
        out.update({f"precision@{k}_category": float(np.mean(prec_cat[k])) for k in ks})
        if match_attributes:
            label = "+".join(match_attributes)
            out.update({f"precision@{k}_category+{label}": float(np.mean(prec_attr[k])) for k in ks})
    return out


def queries_from_dataset(dataset, split: str) -> list[Query]:
    """Labelled photos as queries whose right product is the SKU named after their class."""
    queries = []
    for sample in dataset.split(split):
        name = dataset.classes[sample.label]
        queries.append(Query(str(sample.path), sku=name, category_leaf=name))
    return queries
