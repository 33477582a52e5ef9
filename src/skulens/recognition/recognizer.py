"""``Recognizer.load(run).predict(image)``: label, confidence and category path for product photos.

Photos become NumPy model inputs, batched as the engine takes them (``Engine.batch``): with an ONNX
export, predicting never imports torch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skulens.data.images import ImageSource, load_image
from skulens.data.pipeline import ordered_map
from skulens.data.transforms import image_to_array
from skulens.engines import Engine, load_engine
from skulens.engines.detector import Detector, box_areas, intersection_areas
from skulens.errors import ImageError, SkulensError
from skulens.evaluation.backoff import Backoff, tree_or_flat
from skulens.evaluation.thresholds import load_thresholds
from skulens.models.outputs import describe
from skulens.runs import RunFolder


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
    # Back-off (see recognition/backoff.py): the deepest confident node of a consistent path, or
    # unknown. Without `skulens calibrate` the thresholds are 0 and the answer is the full path.
    answer_path: list[str] = field(default_factory=list)
    answer_confidence: float | None = None
    unknown: bool = False
    level_confidences: list[dict] = field(default_factory=list)
    # {name: {"value": v, "confidence": p}} per softmax attribute; tags: {"value": "a|b" (those above
    # their thresholds, "-": none), "confidence": None, "tags": {tag: p}}. Empty without attributes.
    attributes: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ObjectPrediction:
    """One product found in a photo of several: its box (pixels of the upright photo: x1, y1, x2, y2),
    the detector's score (None for the whole-photo fallback when nothing was found) and its prediction."""

    box: list[float]
    score: float | None
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"box": self.box, "score": self.score, **self.prediction.to_dict()}


# A box narrower than this (pixels) is no product the classifier could name: left out.
MIN_OBJECT_SIDE = 8
# A box this large a share of the photo means the photo is of one product: it is answered whole, as
# predict() answers it, so that objects=true changes nothing for a single-product photo. Chosen on Grocery
# Store val (benchmarks/experiments/objects_on_single_photos.py): the detector's largest box covers at
# least 0.81 of every single photo and at most 0.47 of any composite of 2-4 products.
ONE_PRODUCT_SHARE = 0.65


class Recognizer:
    """A trained run, ready to predict. Build with :meth:`load`."""

    def __init__(
        self,
        engine: Engine,
        tta: bool = False,
        thresholds: list[float | None] | None = None,
        attribute_thresholds: dict[str, list[float]] | None = None,
        detector=None,
    ):
        self.engine = engine
        self.detector = detector  # engines.detector.Detector: finds the products of a multi-product photo
        self.attribute_thresholds = attribute_thresholds
        self.config = engine.config
        self.tta = tta
        self.calibrated = thresholds is not None
        self.backoff = Backoff(tree_or_flat(self.config.tree, self.config.classes), thresholds)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        *,
        engine: str = "auto",
        device: str = "auto",
        tta: bool = False,
        threads: int | None = None,
        detector: str | Path | None = None,
    ) -> Recognizer:
        """``engine``: ``auto`` (ONNX Runtime when an up-to-date export exists and we are on a CPU),
        ``torch`` or ``onnx``. ``detector``: a trained product detector's folder (`skulens detector
        train`), for photos of several products (``predict(..., objects=True)``)."""
        runner = load_engine(run_dir, engine, device, threads=threads)
        found = None
        if detector is not None:
            found = Detector.load(detector)
        thresholds = load_thresholds(run_dir, runner.config)
        return cls(runner, tta, thresholds, RunFolder(run_dir).attribute_thresholds(), detector=found)

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    def category_path(self, class_index: int) -> list[str]:
        if self.config.tree is not None:
            return list(self.config.tree.paths[class_index])
        return [self.config.classes[class_index]]

    def _input(self, image: ImageSource) -> np.ndarray:
        return image_to_array(image, self.config.preprocessing)

    def predict(self, image: ImageSource, top_k: int = 5, *, objects: bool = False, **find):
        """Predict one image (a path, bytes, a file object or a PIL image). Raises ImageError if unusable.
        ``objects=True``: a list of :class:`ObjectPrediction`, one per product found (``find``: the
        options of :meth:`predict_objects`)."""
        if objects:
            return self.predict_objects(image, top_k, **find)
        return self.predict_batch([image], top_k=top_k)[0]

    def predict_objects(
        self,
        image: ImageSource,
        top_k: int = 5,
        *,
        single: bool = False,
        score_threshold: float | None = None,
        max_objects: int = 20,
    ) -> list[ObjectPrediction]:
        """Each product of a photo of several: the detector's boxes, best first, each crop recognised.
        Nothing found: the whole photo is the one object (score None). A box over most of the photo
        (ONE_PRODUCT_SHARE) with no other box outside it: the photo is of one product, answered whole in
        that box, so a single-product photo gets today's answer. ``single``: only the largest, most
        central product; ``score_threshold``: the detector's (default: its own, chosen on val)."""
        if self.detector is None:
            raise SkulensError(
                "no product detector loaded: pass detector=DIR (a folder made by skulens detector train)"
            )
        photo = load_image(image)
        found = self.detector.detect(photo, score_threshold=score_threshold, max_objects=max_objects, single=single)
        boxes = [(b.box, b.score) for b in found if min(b.box[2] - b.box[0], b.box[3] - b.box[1]) >= MIN_OBJECT_SIDE]
        whole = self._one_product(photo, boxes, top_k)  # before cropping: a photo of one product needs no crop
        if whole is not None:
            return [whole]
        crops, kept = [], []
        for box, score in boxes:
            try:  # a crop is an image like any other: the same checks (a sliver is no photo)
                crops.append(self._input(photo.crop(tuple(round(v) for v in box))))
                kept.append((box, score))
            except ImageError:
                continue
        if not kept:  # every box was a sliver: the whole photo, as when nothing is found
            return [self._one_product(photo, [], top_k)]
        probs, attrs = self.engine.outputs(self.engine.batch(crops), self.tta)
        return [
            ObjectPrediction(
                [round(v, 1) for v in box], round(score, 4), self._prediction(row, None, top_k, _row(attrs, i))
            )
            for i, ((box, score), row) in enumerate(zip(kept, probs))
        ]

    def _one_product(self, photo, found: list, top_k: int) -> ObjectPrediction | None:
        """The answer when the photo is of one product (no box; or a box over most of the photo and any
        other box mostly inside it, a part of the same product), else None."""
        if not found:
            box, score = (0.0, 0.0, float(photo.width), float(photo.height)), None
        else:
            boxes = np.array([b for b, _ in found], np.float32)
            areas = box_areas(boxes)
            big = int(np.argmax(areas))
            inside = intersection_areas(boxes, boxes[big : big + 1])[:, 0] / np.maximum(areas, 1e-6)
            if areas[big] < ONE_PRODUCT_SHARE * photo.width * photo.height or (inside < 0.5).any():
                return None
            box, score = found[big][0], round(found[big][1], 4)
        return ObjectPrediction([round(v, 1) for v in box], score, self.predict_batch([photo], top_k=top_k)[0])

    def predict_batch(self, images: Iterable[ImageSource], top_k: int = 5) -> list[Prediction]:
        images = list(images)
        if not images:
            return []
        probs, attrs = self.engine.outputs(self.engine.batch([self._input(img) for img in images]), self.tta)
        return [self._prediction(row, img, top_k, _row(attrs, i)) for i, (row, img) in enumerate(zip(probs, images))]

    def predict_files(
        self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 8, workers: int | None = None
    ):
        """Yield ``(path, Prediction or None, error message or None)`` in order; a bad file never stops
        the rest. ``workers`` threads decode the next photos while the engine runs a batch (None: one
        per two cores; 0: decode in this thread)."""
        pending: list[tuple[Path, np.ndarray]] = []

        def flush():
            probs, attrs = self.engine.outputs(self.engine.batch([x for _, x in pending]), self.tta)
            results = [
                (p, self._prediction(row, p, top_k, _row(attrs, i)), None)
                for i, ((p, _), row) in enumerate(zip(pending, probs))
            ]
            pending.clear()
            return results

        decoded = ordered_map(self._input, (Path(p) for p in paths), workers, ahead=2 * batch_size)
        for path, x, error in decoded:
            if error is not None:
                yield path, None, error
                continue
            pending.append((path, x))
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def _prediction(self, probs, source: ImageSource, top_k: int, attrs: dict | None = None) -> Prediction:
        """One image's Prediction from its row of class probabilities (a torch tensor or a NumPy array)."""
        p = np.asarray(probs)
        top = np.argsort(-p, kind="stable")[: min(max(1, top_k), len(self.classes))]
        scored = [ScoredClass(self.classes[i], float(p[i]), self.category_path(i)) for i in top.tolist()]
        best = scored[0]
        answer = self.backoff.answers(p)[0]
        return Prediction(
            label=best.label,
            confidence=best.confidence,
            path=best.path,
            top_k=scored,
            source=str(source) if isinstance(source, (str, Path)) else None,
            answer_path=answer.path,
            answer_confidence=answer.confidence,
            unknown=answer.unknown,
            level_confidences=[asdict(lv) for lv in answer.levels],
            attributes=describe(attrs, self.config.model.attributes, self.attribute_thresholds) if attrs else {},
        )


def _row(attrs: dict, i: int) -> dict:
    return {name: probs[i] for name, probs in attrs.items()}
