"""Text that finds products by their photos: a map from sentence vectors into the image embedding space,
learned from a catalog's (text, photo) pairs with the image model frozen (LiT, Zhai et al. 2022).

Why: a catalog whose text is thin (no titles, terse ones) cannot be searched by words on its text; its
photos can. The map is trained with the CLIP loss (symmetric InfoNCE over a batch of pairs) on the
products' texts and their first catalog photo's stored vector, so "white sneakers" lands near photos of
white sneakers whatever their titles say. Only the map learns: the sentence model and the image model
stay as they are, so the catalog's vectors need nothing recomputed.

The file is safetensors (``weight``, ``bias``) with JSON metadata naming the sentence model and the
image model it was fitted for; a catalog refuses one fitted for other models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skulens.errors import SkulensError
from skulens.models.outputs import unit_rows


@dataclass
class TextProjection:
    weight: np.ndarray  # (image dim, text dim)
    bias: np.ndarray  # (image dim,)
    text_model: str
    image_model: str
    info: dict = field(default_factory=dict)
    path: str | None = None

    def apply(self, text_vectors: np.ndarray) -> np.ndarray:
        """Sentence vectors -> unit vectors in the image space (searched by inner product)."""
        return unit_rows(np.asarray(text_vectors, np.float32) @ self.weight.T + self.bias)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.weight.tobytes())
        h.update(self.bias.tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path.resolve())
        meta = {"text_model": self.text_model, "image_model": self.image_model, "info": json.dumps(self.info)}
        save_file({"weight": self.weight, "bias": self.bias}, str(path), metadata=meta)
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
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except Exception as exc:  # safetensors' own error types for a file that is not one of its
            raise SkulensError(f"{path}: not a text projection file ({exc})") from None
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or "image_model" not in meta:
            raise SkulensError(f"{path}: not a text projection file (expected weight (d, t), bias (d,), models)")
        info = json.loads(meta.get("info", "{}"))
        return cls(weight, bias, meta.get("text_model", ""), meta["image_model"], info, str(path.resolve()))


def fit(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    *,
    text_model: str,
    image_model: str,
    epochs: int = 20,
    batch_size: int = 512,
    lr: float = 1e-3,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> TextProjection:
    """Learn the map on pairs (row i of each matrix: one product). A plain linear layer, because it
    keeps the sentence space's geometry and cannot overfit a few thousand pairs the way a deeper
    network would."""
    import torch
    from tqdm import tqdm

    if len(text_vectors) != len(image_vectors) or len(text_vectors) < 8:
        raise SkulensError(f"a text projection needs at least 8 (text, photo) pairs; got {len(text_vectors)}")
    torch.manual_seed(seed)
    texts = torch.as_tensor(np.asarray(text_vectors, np.float32))
    images = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_vectors, np.float32)), dim=1)
    layer = torch.nn.Linear(texts.shape[1], images.shape[1])
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="text projection", disable=not progress):
        for batch in torch.randperm(len(texts), generator=generator).split(batch_size):
            if len(batch) < 2:
                continue
            loss = _clip_loss(layer(texts[batch]), images[batch], temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    info = {"pairs": len(texts), "epochs": epochs, "temperature": temperature, "lr": lr, "batch_size": batch_size}
    weight = layer.weight.detach().numpy().astype(np.float32)
    bias = layer.bias.detach().numpy().astype(np.float32)
    return TextProjection(weight, bias, text_model, image_model, info)


def _clip_loss(projected, images, temperature: float):
    import torch

    logits = torch.nn.functional.normalize(projected, dim=1) @ images.T / temperature
    target = torch.arange(len(images))
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def catalog_pairs(catalog, encoder) -> tuple[np.ndarray, np.ndarray, int]:
    """(sentence vectors, photo vectors, products left out) of the catalog's products that have words
    and a photo: each product's text and its first catalog photo's stored vector. Sentence vectors the
    catalog already keeps (made by this model) are reused."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session, selectinload

    from skulens.catalog.db import ProductRow, get_meta
    from skulens.catalog.text_search import document

    texts, stored, vectors, skipped = [], [], [], 0
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
    if not texts:
        raise SkulensError("no product has both words and a photo to learn a text projection from")
    missing = [i for i, v in enumerate(stored) if v is None]
    made = encoder.encode([texts[i] for i in missing], progress=len(missing) > 2000) if missing else []
    for i, vector in zip(missing, made):
        stored[i] = vector
    return np.stack(stored), np.stack(vectors), skipped
