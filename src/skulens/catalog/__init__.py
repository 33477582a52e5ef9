"""Catalog and visual search: products in a database, their image embeddings in a FAISS index."""

from skulens.catalog.embedder import Embedder, load_embedder
from skulens.catalog.importers import (
    CsvMapping,
    ImportReport,
    import_products,
    products_from_dataset,
    read_products_csv,
)
from skulens.catalog.store import Catalog, Product, SearchHit

__all__ = [
    "Catalog",
    "CsvMapping",
    "Embedder",
    "ImportReport",
    "Product",
    "SearchHit",
    "import_products",
    "load_embedder",
    "products_from_dataset",
    "read_products_csv",
]
