"""Text that finds products by their photos: a map from sentence vectors into the image embedding space,
learned from a catalog's (text, photo) pairs with the image model frozen (LiT, Zhai et al. 2022).

Why: a catalog whose text is thin (no titles, terse ones) cannot be searched by words on its text; its
photos can. The map is trained with the CLIP loss (symmetric InfoNCE over a batch of pairs) on the
products' texts and their first catalog photo's stored vector, so "white sneakers" lands near photos of
white sneakers whatever their titles say. Only the map learns: the sentence model and the image model
stay as they are, so the catalog's vectors need nothing recomputed.

Words say the kind of product more surely than a frozen photo space separates kinds (on fashion-small
the photos' 10 nearest photos share the article type only 59% of the time), so where the catalog's products
have categories the map also learns two heads over the same frozen vectors: the category a text names (a
logistic regression on the sentence vector) and the category a photo shows (a one-hidden-layer probe of
the image vector: on fashion-small val 82.7% of article types against a linear probe's 81.4%). A photo's
score is its cosine with the projected words plus ``mix`` times the log of the heads' agreement (the
probability that text and photo name the same category). Why the log: the map ranks by cos / T, a
softmax's logits, and adding log P(same category) to a logit is Bayes' rule with the category as prior, so
``mix`` is of the order of the map's temperature. On fashion-small val, at each arm's best mix, the log with
the hidden probe gives 64.7% Recall@10 at 81.7% category precision@10, the probability with a linear probe
59.2% at 82.4% (benchmarks/experiments/category_heads_variants.py). The catalog's index finds candidates
by the cosine; the agreement re-orders them. ``mix`` is chosen on pairs held out of the fit (Recall@10 of the product +
precision@10 of its category, the two things a shopper sees).

The file is safetensors (``weight``, ``bias``; with categories the heads' tensors, ``text_category_*`` and
``image_category_*``) with JSON metadata naming the sentence model and the image model it was fitted for,
the categories, the mix and the heads' format; a catalog refuses one fitted for other models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skulens.errors import SkulensError
from skulens.models.outputs import unit_rows

# "2": the log of the agreement, a photo probe with a hidden layer (files of format 1 scored the agreement
# itself, and their mix was chosen for it: they are refused, not read with another meaning).
HEADS_FORMAT = "2"
AGREEMENT_FLOOR = 1e-6  # log(1e-6) = -13.8: a photo of a category the words exclude drops, by a bounded amount
PROBE_HIDDEN = 2048  # the photo probe's hidden layer (fashion-small val: 2048 units, 40 epochs, chosen)
PROBE_EPOCHS = 40


def floored_log(agreement: np.ndarray) -> np.ndarray:
    """log(agreement), floored so that a photo the probe is sure about costs a bounded amount."""
    return np.log(np.maximum(agreement, AGREEMENT_FLOOR))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class CategoryHeads:
    """Heads over the frozen vectors: which category a text names (``text_weight``, (C, t), ``text_bias``)
    and which a photo shows: logits ``image_weight @ h + image_bias`` where ``h`` is the unit photo vector,
    or with ``image_hidden_weight`` (H, d) a ReLU layer of it (the probe ``fit`` learns)."""

    categories: list[str]
    text_weight: np.ndarray
    text_bias: np.ndarray
    image_weight: np.ndarray
    image_bias: np.ndarray | None = None
    image_hidden_weight: np.ndarray | None = None
    image_hidden_bias: np.ndarray | None = None

    def __post_init__(self):
        if self.image_bias is None:
            self.image_bias = np.zeros(len(self.categories), np.float32)

    def text_probabilities(self, text_vectors: np.ndarray) -> np.ndarray:
        return _softmax(np.asarray(text_vectors, np.float32) @ self.text_weight.T + self.text_bias)

    def image_probabilities(self, image_vectors: np.ndarray) -> np.ndarray:
        features = unit_rows(image_vectors)
        if self.image_hidden_weight is not None:
            features = np.maximum(features @ self.image_hidden_weight.T + self.image_hidden_bias, 0.0)
        return _softmax(features @ self.image_weight.T + self.image_bias)

    def agreement(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
        """(texts, photos): the probability that each text and each photo are of the same category."""
        return self.text_probabilities(text_vectors) @ self.image_probabilities(image_vectors).T

    def log_agreement(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
        """``floored_log`` of ``agreement``."""
        return floored_log(self.agreement(text_vectors, image_vectors))

    def tensors(self) -> dict[str, np.ndarray]:
        named = {
            "text_category_weight": self.text_weight,
            "text_category_bias": self.text_bias,
            "image_category_weight": self.image_weight,
            "image_category_bias": self.image_bias,
        }
        if self.image_hidden_weight is not None:
            named.update(image_category_hidden_weight=self.image_hidden_weight)
            named.update(image_category_hidden_bias=self.image_hidden_bias)
        return named

    @classmethod
    def from_tensors(cls, tensors: dict, categories: list[str]) -> CategoryHeads:
        return cls(
            list(categories),
            tensors["text_category_weight"],
            tensors["text_category_bias"],
            tensors["image_category_weight"],
            tensors["image_category_bias"],
            tensors.get("image_category_hidden_weight"),
            tensors.get("image_category_hidden_bias"),
        )

    def fits(self, text_dim: int, image_dim: int) -> bool:
        c = len(self.categories)
        hidden = self.image_hidden_weight
        if hidden is not None and (
            hidden.ndim != 2 or hidden.shape[1] != image_dim or self.image_hidden_bias.shape != (hidden.shape[0],)
        ):
            return False
        into_image_head = image_dim if hidden is None else hidden.shape[0]
        return (
            self.text_weight.shape == (c, text_dim)
            and self.text_bias.shape == (c,)
            and self.image_weight.shape == (c, into_image_head)
            and self.image_bias.shape == (c,)
        )


@dataclass
class TextProjection:
    weight: np.ndarray  # (image dim, text dim)
    bias: np.ndarray  # (image dim,)
    text_model: str
    image_model: str
    info: dict = field(default_factory=dict)
    path: str | None = None
    heads: CategoryHeads | None = None
    mix: float = 0.0

    def apply(self, text_vectors: np.ndarray) -> np.ndarray:
        """Sentence vectors -> unit vectors in the image space (searched by inner product)."""
        return unit_rows(np.asarray(text_vectors, np.float32) @ self.weight.T + self.bias)

    def scores(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
        """(texts, photos): cosine of the projected words with each photo, plus ``mix`` times the log of
        the category heads' agreement when there are heads."""
        if self.heads is None or self.mix <= 0:
            return self.cosines(text_vectors, image_vectors)
        cosine, log_agreement = self.score_parts(text_vectors, image_vectors)
        return cosine + self.mix * log_agreement

    def cosines(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
        """(texts, photos): cosine of the projected words with each photo."""
        return self.apply(text_vectors) @ unit_rows(image_vectors).T

    def score_parts(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, log agreements) of texts and photos: ``scores`` is the first plus ``mix`` times the second."""
        return self.cosines(text_vectors, image_vectors), self.heads.log_agreement(text_vectors, image_vectors)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.weight.tobytes())
        h.update(self.bias.tobytes())
        if self.heads is not None:
            for array in self.heads.tensors().values():
                h.update(array.tobytes())
            h.update(json.dumps([self.heads.categories, self.mix]).encode())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path.resolve())
        meta = {"text_model": self.text_model, "image_model": self.image_model, "info": json.dumps(self.info)}
        tensors = {"weight": self.weight, "bias": self.bias}
        if self.heads is not None:
            tensors.update(self.heads.tensors())
            meta.update(categories=json.dumps(self.heads.categories), mix=repr(float(self.mix)), heads=HEADS_FORMAT)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextProjection:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SkulensError(f"{path}: no such text projection (make one with `skulens catalog fit-text-projection`)")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            weight, bias = tensors["weight"], tensors["bias"]
            named = json.loads(meta["categories"]) if "categories" in meta else None
            if named is not None and meta.get("heads") != HEADS_FORMAT:
                raise SkulensError(
                    f"{path}: category heads from an earlier skulens (scored in probabilities, not their log); "
                    "fit it again with `skulens catalog fit-text-projection`"
                )
            heads = CategoryHeads.from_tensors(tensors, named) if named is not None else None
            mix = float(meta.get("mix", 0.0))
        except SkulensError:
            raise
        except Exception as exc:  # safetensors' own error types for a file that is not one of its
            raise SkulensError(f"{path}: not a text projection file ({exc})") from None
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or "image_model" not in meta:
            raise SkulensError(f"{path}: not a text projection file (expected weight (d, t), bias (d,), models)")
        if heads is not None and not heads.fits(weight.shape[1], weight.shape[0]):
            raise SkulensError(f"{path}: not a text projection file (category heads of the wrong shape)")
        info = json.loads(meta.get("info", "{}"))
        return cls(weight, bias, meta.get("text_model", ""), meta["image_model"], info, str(path.resolve()), heads, mix)


# The weight of the log category agreement next to the cosine, tried on held-out pairs (0: the plain
# projection); around the map's temperature (0.02-0.05), where a logit's prior belongs (module docstring).
MIX_GRID = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
HELD_OUT_SHARE = 0.1
MIN_HELD_OUT = 20  # fewer labelled pairs than this held out: no category heads (nothing to choose the mix on)


def fit(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    *,
    text_model: str,
    image_model: str,
    categories: list[str] | None = None,
    mix: float | None = None,
    epochs: int = 20,
    batch_size: int = 512,
    lr: float = 1e-3,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> TextProjection:
    """Learn the map on pairs (row i of each matrix: one product). A plain linear layer, because it
    keeps the sentence space's geometry and cannot overfit a few thousand pairs the way a deeper
    network would. ``categories`` (one per pair, "" for none): also learn the category heads, on all
    but a held-out share of the pairs, on which the mix is chosen (``mix``: use this one instead; the
    held-out figures of every mix are in ``info["mix_choice"]`` either way)."""
    import torch

    if len(text_vectors) != len(image_vectors) or len(text_vectors) < 8:
        raise SkulensError(f"a text projection needs at least 8 (text, photo) pairs; got {len(text_vectors)}")
    mix = None if mix is None else _checked_mix(mix)
    torch.manual_seed(seed)
    texts = torch.as_tensor(np.asarray(text_vectors, np.float32))
    images = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_vectors, np.float32)), dim=1)
    names, labels = _category_labels(categories, len(texts))
    held = _held_out(labels, seed) if names else np.zeros(0, np.int64)
    if names and len(held) < MIN_HELD_OUT:
        names, held = [], np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(texts)), held)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "temperature": temperature, "seed": seed}
    layer = _fit_map(texts[train], images[train], settings, progress)
    info = {"pairs": len(texts), **{k: v for k, v in settings.items() if k != "seed"}}
    weight = layer.weight.detach().numpy().astype(np.float32)
    bias = layer.bias.detach().numpy().astype(np.float32)
    projection = TextProjection(weight, bias, text_model, image_model, info)
    if names:
        projection.heads = _fit_heads(texts[train], images[train], labels[train], names, seed, progress)
        chosen, info["mix_choice"] = _choose_mix(projection, texts[held], images[held], labels[held])
        projection.mix = chosen if mix is None else mix
        info.update(categories=len(names), held_out=len(held), fitted_on=len(train))
    return projection


def _checked_mix(mix: float) -> float:
    if not 0.0 <= mix <= 10.0:
        raise SkulensError(f"the category mix must be between 0 and 10, not {mix}")
    return float(mix)


def _fit_map(texts, images, settings: dict, progress: bool):
    """The CLIP-trained linear map from sentence vectors to the image space."""
    import torch
    from tqdm import tqdm

    layer = torch.nn.Linear(texts.shape[1], images.shape[1])
    optimizer = torch.optim.Adam(layer.parameters(), lr=settings["lr"])
    generator = torch.Generator().manual_seed(settings["seed"])
    for _ in tqdm(range(settings["epochs"]), desc="text projection", disable=not progress):
        for batch in torch.randperm(len(texts), generator=generator).split(settings["batch_size"]):
            if len(batch) < 2:
                continue
            loss = _clip_loss(layer(texts[batch]), images[batch], settings["temperature"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return layer


def _category_labels(categories: list[str] | None, n: int) -> tuple[list[str], np.ndarray]:
    """(category names, each pair's index in them or -1); no names when fewer than two categories
    hold two pairs each (no head can learn from that)."""
    if categories is None:
        return [], np.full(n, -1)
    if len(categories) != n:
        raise SkulensError(f"{len(categories)} categories for {n} pairs")
    counts: dict[str, int] = {}
    for c in categories:
        if c:
            counts[c] = counts.get(c, 0) + 1
    names = sorted(c for c, k in counts.items() if k >= 2)
    if len(names) < 2:
        return [], np.full(n, -1)
    index = {c: i for i, c in enumerate(names)}
    return names, np.array([index.get(c, -1) for c in categories])


def _held_out(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded share of the labelled pairs, kept out of every fit to choose the mix on."""
    labelled = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(labelled, int(len(labelled) * HELD_OUT_SHARE), replace=False))


def _fit_heads(texts, images, labels: np.ndarray, names: list[str], seed: int, progress: bool) -> CategoryHeads:
    """A multinomial logistic regression text -> category and a one-hidden-layer probe photo -> category
    on the labelled pairs. In torch rather than scikit-learn: lbfgs on 17k x 1280 photo vectors takes
    minutes; Adam takes seconds for the same held-out accuracy (benchmarks/experiments/text_to_image.py)."""
    import torch

    keep = torch.as_tensor(np.flatnonzero(labels >= 0))
    target = torch.as_tensor(labels)[keep]
    text_head = _logistic(texts[keep], target, len(names), seed, progress, "text categories")
    hidden, image_head = _photo_probe(images[keep], target, len(names), seed, progress)
    return CategoryHeads(
        names,
        _numpy(text_head.weight),
        _numpy(text_head.bias),
        _numpy(image_head.weight),
        _numpy(image_head.bias),
        _numpy(hidden.weight),
        _numpy(hidden.bias),
    )


def _numpy(parameter) -> np.ndarray:
    return parameter.detach().numpy().astype(np.float32)


def _logistic(x, y, classes: int, seed: int, progress: bool, what: str, epochs: int = 30):
    import torch

    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-5)
    _train_classifier(layer, optimizer, x, y, seed, epochs, progress, what)
    return layer


def _photo_probe(x, y, classes: int, seed: int, progress: bool, epochs: int = PROBE_EPOCHS):
    """(hidden layer, output layer) of a ReLU probe of the unit photo vectors, trained with dropout: a
    photo space made for ImageNet's classes bends the shop's categories (a linear probe, and 20 epochs,
    were tried on fashion-small val: benchmarks/experiments/category_heads_variants.py)."""
    import torch

    torch.manual_seed(seed)
    hidden, output = torch.nn.Linear(x.shape[1], PROBE_HIDDEN), torch.nn.Linear(PROBE_HIDDEN, classes)
    drop = torch.nn.Dropout(0.2)
    net = torch.nn.Sequential(drop, hidden, torch.nn.ReLU(), drop, output)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    _train_classifier(net, optimizer, x, y, seed, epochs, progress, "photo categories")
    return hidden, output


def _train_classifier(net, optimizer, x, y, seed: int, epochs: int, progress: bool, what: str) -> None:
    import torch
    from tqdm import tqdm

    net.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=what, disable=not progress):
        for batch in torch.randperm(len(x), generator=generator).split(256):
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()


def _choose_mix(projection: TextProjection, texts, images, labels: np.ndarray) -> tuple[float, list[dict]]:
    """The mix with the best held-out Recall@10 + category precision@10 (ties: the smaller mix)."""
    cosine, log_agreement = projection.score_parts(texts.numpy(), images.numpy())
    tried, best = [], (-1.0, 0.0)
    for mix in MIX_GRID:
        recall, precision = recall_and_precision(cosine + mix * log_agreement, labels)
        tried.append({"mix": mix, "recall@10": round(recall, 4), "category_p@10": round(precision, 4)})
        if recall + precision > best[0] + 1e-9:
            best = (recall + precision, mix)
    return best[1], tried


def recall_and_precision(scores: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Of (texts, photos) scores where text i belongs to photo i: Recall@k of its own photo and the share of
    the top k photos in its category (``labels``: each pair's category)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1] - 1)]
    recall = float((top == np.arange(len(scores))[:, None]).any(axis=1).mean())
    return recall, float((labels[top] == labels[:, None]).mean())


def _clip_loss(projected, images, temperature: float):
    import torch

    logits = torch.nn.functional.normalize(projected, dim=1) @ images.T / temperature
    target = torch.arange(len(images))
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def catalog_pairs(catalog, encoder) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(sentence vectors, photo vectors, category paths joined by "/" ("" for none), products left out)
    of the catalog's products that have words and a photo: each product's text and its first catalog
    photo's stored vector. Sentence vectors the catalog already keeps (made by this model) are reused."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session, selectinload

    from skulens.catalog.db import ProductRow, get_meta
    from skulens.catalog.text_search import document

    texts, stored, vectors, categories, skipped = [], [], [], [], 0
    with Session(catalog.engine) as session:
        same_model = (get_meta(session, "text_model") or {}).get("id") == encoder.model_id
        for row in session.scalars(select(ProductRow).options(selectinload(ProductRow.images))):
            photo = next((i for i in row.images if i.role == "catalog" and i.vector is not None), None)
            words = document(row.title, row.description, row.category_path, row.attributes)
            if photo is None or not words.strip():
                skipped += 1
                continue
            texts.append(words)
            stored.append(np.frombuffer(row.text_vector, np.float32) if same_model and row.text_vector else None)
            vectors.append(np.frombuffer(photo.vector, np.float32))
            categories.append("/".join(row.category_path or []))
    if not texts:
        raise SkulensError("no product has both words and a photo to learn a text projection from")
    missing = [i for i, v in enumerate(stored) if v is None]
    made = encoder.encode([texts[i] for i in missing], progress=len(missing) > 2000) if missing else []
    for i, vector in zip(missing, made):
        stored[i] = vector
    return np.stack(stored), np.stack(vectors), categories, skipped
