"""``Recognizer.load(run).predict(image)``: label, confidence and category path for product photos."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from skulens.data.images import ImageSource, load_image
from skulens.data.transforms import to_model_input
from skulens.engines.select import Engine, load_engine
from skulens.errors import ImageError


@dataclass
class ScoredClass:
    label: str
    confidence: float
    path: list[str]


@dataclass
class Prediction:
    """The answer for one image. ``path`` is its category path from the top of the tree."""

    label: str
    confidence: float
    path: list[str]
    top_k: list[ScoredClass] = field(default_factory=list)
    source: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Recognizer:
    """A trained run, ready to predict. Build with :meth:`load`."""

    def __init__(self, engine: Engine, tta: bool = False):
        self.engine = engine
        self.config = engine.config
        self.tta = tta

    @classmethod
    def load(cls, run_dir: str | Path, *, engine: str = "auto", device: str = "auto", tta: bool = False) -> "Recognizer":
        """``engine``: ``auto`` (ONNX Runtime when an up-to-date export exists and we are on a CPU), ``torch`` or ``onnx``."""
        return cls(load_engine(run_dir, engine, device), tta)

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    def category_path(self, class_index: int) -> list[str]:
        if self.config.tree is not None:
            return list(self.config.tree.paths[class_index])
        return [self.config.classes[class_index]]

    def _input(self, image: ImageSource) -> torch.Tensor:
        pre = self.config.preprocessing
        return to_model_input(load_image(image, draft_size=pre.img_size), pre)

    def predict(self, image: ImageSource, top_k: int = 5) -> Prediction:
        """Predict one image (a path, bytes, a file object or a PIL image). Raises ImageError if unusable."""
        return self.predict_batch([image], top_k=top_k)[0]

    def predict_batch(self, images: Iterable[ImageSource], top_k: int = 5) -> list[Prediction]:
        images = list(images)
        if not images:
            return []
        probs = self.engine.probabilities(torch.stack([self._input(img) for img in images]), self.tta)
        return [self._prediction(row, img, top_k) for row, img in zip(probs, images)]

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 8):
        """Yield ``(path, Prediction or None, error message or None)``; a bad file never stops the rest."""
        pending: list[tuple[Path, torch.Tensor]] = []

        def flush():
            probs = self.engine.probabilities(torch.stack([t for _, t in pending]), self.tta)
            results = [(p, self._prediction(row, p, top_k), None) for (p, _), row in zip(pending, probs)]
            pending.clear()
            return results

        for path in paths:
            try:
                pending.append((Path(path), self._input(path)))
            except ImageError as exc:
                yield Path(path), None, str(exc)
                continue
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def _prediction(self, probs: torch.Tensor, source: ImageSource, top_k: int) -> Prediction:
        values, indices = probs.topk(min(max(1, top_k), len(self.classes)))
        scored = [ScoredClass(self.classes[i], float(v), self.category_path(i))
                  for v, i in zip(values.tolist(), indices.tolist())]
        best = scored[0]
        return Prediction(label=best.label, confidence=best.confidence, path=best.path, top_k=scored,
                          source=str(source) if isinstance(source, (str, Path)) else None)
