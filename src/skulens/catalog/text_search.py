"""Text search over a catalog: lexical (BM25, the ``bm25s`` library) and semantic (all-MiniLM-L6-v2
sentence vectors), fused by reciprocal rank fusion.

Each product is one document: its title, description, category path and attribute values, plus the
colour family of a colour attribute (so "blue" finds Navy Blue). The first text search of a catalog
(with the sentence model installed) makes every product's sentence vector (``products.text_vector``)
and records the model (``meta.text_model``); from then on each write brings its product's vector, in
the same transaction as its image vectors. Catalogs never searched by text never load the model.
The in-memory index is a cache of the database like the image index: it notes the index log position
it was built at and is built again when a write has moved it, so every server's answers follow every
server's writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from skulens.catalog.db import ProductRow, get_meta, last_log_seq, set_meta
from skulens.catalog.threads import one_blas_thread
from skulens.data.colour_families import COLOUR_ATTRIBUTES, family_of
from skulens.errors import SkulensError

MAX_QUERY_CHARS = 500
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): rank r counts 1 / (60 + r)
MODES = ("hybrid", "lexical", "semantic")


class QueryError(SkulensError):
    """A text query that cannot be searched (empty, too long)."""


def check_query(text: str) -> str:
    """The query with its spaces tidied; QueryError when there is nothing to search for."""
    query = " ".join(str(text).split())
    if not query:
        raise QueryError("the text query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the text query is {len(query)} characters long; at most {MAX_QUERY_CHARS}")
    if not query_words(query):
        raise QueryError(f"the text query {query[:60]!r} holds only common words: name the product or a feature")
    return query


def query_words(query: str) -> list[str]:
    """The words of a query that BM25 counts (English stop words and one-letter words left out)."""
    return [word for word in _tokenize([query]).vocab if word]


def named_families(query: str) -> set[str]:
    """The colour families a query names ("in navy blue" -> {"Blue"}): by family name or by value."""
    from skulens.data.colour_families import load_families

    families, values = load_families()
    words = f" {' '.join(query.lower().split())} "
    named = {f for f in families if f" {f.lower()} " in words}
    named |= {family for value, family in values.items() if f" {value.lower()} " in words}
    return named


def other_words(query: str, families: set[str]) -> list[str]:
    """The query's words that are not colour words of ``families`` ("in navy blue" -> [])."""
    from skulens.data.colour_families import load_families

    colour_words = set()
    for value, family in load_families()[1].items():
        if family in families:
            colour_words |= set(value.lower().split())
    colour_words |= {f.lower() for f in families}
    return [w for w in query_words(query) if w not in colour_words]


def document(title: str, description: str, category_path: Iterable[str], attributes: dict) -> str:
    """The text a product is found by."""
    words = [title, description, " ".join(category_path)]
    for name, value in (attributes or {}).items():
        words.append(str(value))
        family = family_of(str(value)) if str(name).lower() in COLOUR_ATTRIBUTES else None
        if family and family.lower() != str(value).lower():
            words.append(family)
    return " ".join(w for w in words if w)


def _tokenize(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked id lists: (id, score), best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class TextIndex:
    """BM25 over the product documents, and their sentence vectors, at one state of the catalog."""

    def __init__(self, log_seq: int, product_ids: np.ndarray, documents: list[str], vectors: np.ndarray | None):
        import bm25s

        self.log_seq = log_seq
        self.product_ids = product_ids
        self.position = {int(pid): i for i, pid in enumerate(product_ids)}
        self.vectors = vectors
        self.documents = documents
        self.has_words = np.array([bool(d.strip()) for d in documents], bool)
        self.bm25 = bm25s.BM25()
        tokens = _tokenize(documents) if documents else None
        self.lexical_ready = tokens is not None and any(word for word in tokens.vocab)  # bm25s needs a word
        if self.lexical_ready:
            self.bm25.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.product_ids)

    def _mask(self, allowed: set[int] | None) -> np.ndarray | None:
        if allowed is None:
            return None
        mask = np.zeros(len(self), np.float32)
        mask[[self.position[p] for p in allowed if p in self.position]] = 1.0
        return mask

    def lexical_scores(self, query: str) -> np.ndarray:
        """BM25 score of every product (zeros when no query word is in any document)."""
        tokens = [t for t in query_words(query) if t in self.bm25.vocab_dict] if self.lexical_ready else []
        if not tokens:
            return np.zeros(len(self), np.float32)
        return np.asarray(self.bm25.get_scores(tokens), np.float32)

    def lexical(self, query: str, k: int, allowed: set[int] | None = None) -> list[int]:
        scores = self.lexical_scores(query)
        mask = self._mask(allowed)
        if mask is not None:
            scores = scores * mask
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(self.product_ids[i]) for i in order if scores[i] > 0]

    def semantic_scores(self, query_vector: np.ndarray) -> np.ndarray:
        if self.vectors is None or not len(self):
            return np.zeros(len(self))
        with one_blas_thread():  # a matrix-vector product is memory-bound (threads.py says why)
            return self.vectors @ query_vector

    def semantic(self, query_vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[int]:
        scores = np.where(self.has_words, self.semantic_scores(query_vector), -np.inf)  # no words: no meaning
        mask = self._mask(allowed)
        if mask is not None:
            scores = np.where(mask > 0, scores, -np.inf)
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(self.product_ids[i]) for i in order if np.isfinite(scores[i])]


class TextSearch:
    """The text side of one catalog: its index cache and the sentence model (when installed)."""

    def __init__(self, engine):
        self.engine = engine
        self._index: TextIndex | None = None
        self._rows: list = []
        self._lock = threading.Lock()

    @staticmethod
    def encoder():
        """The sentence model, or None when it is not installed (text search is then lexical only)."""
        from skulens.models import text_encoder

        return text_encoder.load_text_encoder() if text_encoder.available() else None

    def require_encoder(self, what: str = "semantic text search"):
        """The sentence model, or QueryError saying how to install it."""
        encoder = self.encoder()
        if encoder is None:
            from skulens.models.text_encoder import INSTALL_HINT

            raise QueryError(f"{what} needs the sentence model: {INSTALL_HINT}")
        return encoder

    def searched_by_meaning(self) -> bool:
        """Whether the catalog has its sentence vectors (a search by meaning has run on it)."""
        return self._recorded_model() is not None

    def _recorded_model(self) -> str | None:
        with Session(self.engine) as session:
            return (get_meta(session, "text_model") or {}).get("id")

    def vectors_for(self, documents: list[str]) -> list[bytes | None]:
        """Sentence vectors for products being written, once the catalog has them (its first semantic
        text search made them all); before that, None each, and an import never loads the model."""
        recorded = self._recorded_model() if documents else None
        if recorded is None:
            return [None] * len(documents)
        encoder = self.encoder()
        if encoder is None or encoder.model_id != recorded:
            return [None] * len(documents)
        return [v.tobytes() for v in encoder.encode(documents)]

    def index(self, semantic: bool = True) -> TextIndex:
        """The index of the catalog as it is now (built again after any write, by any server);
        ``semantic``: with the sentence vectors (loading the model) when it is installed."""
        with self._lock:
            with Session(self.engine) as session:
                seq = last_log_seq(session)
            if self._index is None or self._index.log_seq != seq:
                self._index = self._build(seq)
            if semantic and self._index.vectors is None and len(self._index):
                self._index.vectors = self._vectors(self._rows, self._index.documents)
            return self._index

    def _build(self, seq: int) -> TextIndex:
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    ProductRow.id,
                    ProductRow.title,
                    ProductRow.description,
                    ProductRow.category_path,
                    ProductRow.attributes,
                    ProductRow.text_vector,
                ).order_by(ProductRow.id)
            ).all()
        documents = [document(r.title, r.description, r.category_path, r.attributes) for r in rows]
        self._rows = rows  # for the sentence vectors, made when a search first needs them
        return TextIndex(seq, np.array([r.id for r in rows], np.int64), documents, None)

    def _vectors(self, rows, documents: list[str]) -> np.ndarray | None:
        """Every product's sentence vector; the missing ones (written without the model) are made and
        stored now."""
        encoder = self.encoder()
        if encoder is None:
            return None
        same_model = self._recorded_model() == encoder.model_id
        missing = [i for i, r in enumerate(rows) if r.text_vector is None or not same_model]
        made = encoder.encode([documents[i] for i in missing], progress=len(missing) > 2000) if missing else None
        if missing or not same_model:
            self._store_vectors([rows[i].id for i in missing], made, encoder)
        out = np.zeros((len(rows), encoder.dim), np.float32)
        fill = dict(zip(missing, made if made is not None else []))
        for i, row in enumerate(rows):
            out[i] = fill[i] if i in fill else np.frombuffer(row.text_vector, np.float32)
        return out

    def _store_vectors(self, product_ids: list[int], vectors, encoder) -> None:
        with Session(self.engine) as session, session.begin():
            for pid, vector in zip(product_ids, vectors if vectors is not None else []):
                session.execute(update(ProductRow).where(ProductRow.id == pid).values(text_vector=vector.tobytes()))
            # from now on every write brings its product's vector (vectors_for)
            set_meta(session, "text_model", {"id": encoder.model_id, "dim": encoder.dim})

    def search(
        self,
        query: str,
        k: int,
        mode: str = "hybrid",
        allowed: set[int] | None = None,
        more: list[list[int]] = (),
        query_vector: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Product ids for ``query``, best first, with their fused score; ``more``: other rankings of
        product ids to fuse in (the words through the photos); ``query_vector``: the query's sentence
        vector where the caller has made it already."""
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        query = check_query(query)
        index = self.index(semantic=mode != "lexical")
        depth = max(50, 2 * k)
        rankings = []
        if mode in ("hybrid", "lexical"):
            rankings.append(index.lexical(query, depth, allowed))
        if mode in ("hybrid", "semantic"):
            encoder = self.require_encoder() if mode == "semantic" else self.encoder()
            if encoder is not None and index.vectors is not None:
                vector = encoder.encode([query])[0] if query_vector is None else query_vector
                rankings.append(index.semantic(vector, depth, allowed))
        return fuse([ranking for ranking in [*rankings, *more] if ranking])[:k]

    def rerank(self, query: str, candidates: list[int], mode: str = "hybrid") -> list[int]:
        """``candidates`` (product ids, e.g. by photo) ranked by the words alone, for fusing with theirs."""
        query = check_query(query)
        index = self.index(semantic=mode != "lexical")
        allowed = set(candidates)
        rankings = [index.lexical(query, len(candidates), allowed)] if mode != "semantic" else []
        encoder = self.encoder() if mode != "lexical" else None
        if encoder is not None and index.vectors is not None:
            rankings.append(index.semantic(encoder.encode([query])[0], len(candidates), allowed))
        return [pid for pid, _ in fuse(rankings)]
