"""Image -> L2-normalised embedding, from a trained run or from the pretrained backbone.

Every embedder has a ``model_id``: a digest of its weights and preprocessing. The catalog stores
the id of the model that produced its vectors and refuses queries from any other model, because
vectors from two models live in unrelated spaces and comparing them gives confident nonsense.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from skulens.catalog.projection import Projection
from skulens.data.images import ImageSource
from skulens.data.pipeline import ordered_map
from skulens.data.transforms import Preprocessing, image_to_array, image_to_input
from skulens.engines import Engine, TorchEngine, load_engine
from skulens.errors import SkulensError
from skulens.files import sha256_file
from skulens.models.outputs import unit_rows
from skulens.models.pretrained import has_packaged_weights, packaged_weights_path
from skulens.models.registry import NATIVE_SIZES, ModelSpec, create_model, default_normalization
from skulens.runs import RunConfig, RunFolder
from skulens.runtime import prepare_model, resolve_device


class Embedder:
    """``embed(images) -> float32 (n, dim)``, unit-length rows, from an engine's search vectors."""

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        description: str,
        source: dict | None = None,
        flip: bool = False,
        projection: str | Path | Projection | None = None,
    ):
        self.engine = engine
        self.preprocessing = engine.config.preprocessing
        self.source = source or {}  # how to load this embedder again: {"run": path} or {"pretrained": name}
        # flip: each vector is the mean of the photo's and its mirror image's (the engine's test-time
        # augmentation: twice the compute for steadier vectors). Part of the model identity, as the vectors differ.
        self.flip = flip
        if flip:
            self.source = {**self.source, "flip": True}
            model_id = _flip_id(model_id)
            description += ", flip-averaged"
        self.unprojected_id = model_id  # what a projection of this embedder's vectors is fitted for
        self.projection = self._checked_projection(projection, model_id, description)
        if self.projection is not None:
            self.source = {**self.source, "projection": self.projection.path}
            model_id = hashlib.sha256(f"{model_id}+projection:{self.projection.digest}".encode()).hexdigest()[:16]
            description += f", {self.projection.describe()}"
        self.model_id = model_id
        self.description = description
        pre = self.preprocessing
        self.dim = int(self.embed_tensors(torch.zeros(1, pre.in_chans, pre.img_size, pre.img_size)).shape[1])

    @staticmethod
    def _checked_projection(projection, model_id: str, description: str) -> Projection | None:
        """A PCA fitted on this model's vectors (projection.py), applied to every vector; refused when
        it was fitted for another model, whose axes mean nothing here."""
        projection = Projection.load(projection) if isinstance(projection, (str, Path)) else projection
        if projection is None:
            return None
        if projection.fitted_for != model_id:
            raise SkulensError(
                f"the projection {projection.path or ''} was fitted on the vectors of model "
                f"{projection.fitted_for}, not of this embedder ({model_id}: {description})"
            )
        if projection.path is None:
            raise SkulensError("save the projection to a file first: a catalog records where it lives")
        return projection

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        engine: str = "torch",
        flip: bool = False,
        projection: str | Path | Projection | None = None,
    ) -> Embedder:
        """``engine``: ``torch``, ``onnx`` (the run's exported model, INT8 when present) or ``auto``
        (ONNX when an export with an embedding output exists and we are on a CPU). The engine is
        part of the model identity: INT8 vectors are close to, not equal to, PyTorch's."""
        folder = RunFolder(run_dir)
        config = folder.config()
        kind = f"{config.model.embedding_dim}-d ArcFace embedding" if config.model.embedding_dim else "pooled features"
        loaded = load_engine(folder.path, engine, device) if engine in ("auto", "onnx") else None
        if loaded is not None and not loaded.has_embedding:
            if engine == "onnx":
                raise SkulensError(f"{folder.path}: the ONNX export has no embedding output; re-run `skulens export`")
            loaded = None
        if loaded is None:
            loaded = load_engine(folder.path, "torch", device)
        suffix = "" if loaded.name == "torch" else f", {loaded.name}"
        return cls(
            loaded,
            _digest(folder.weights_sha256(), config.preprocessing, loaded.name, getattr(loaded, "file_sha256", None)),
            f"run {folder.path.name} ({config.model.name}, {kind}{suffix})",
            {"run": str(folder.path.resolve()), "engine": loaded.name},
            flip=flip,
            projection=projection,
        )

    @classmethod
    def pretrained(
        cls,
        name: str = "efficientnet_lite0",
        img_size: int | None = None,
        device: str = "auto",
        flip: bool = False,
        projection: str | Path | Projection | None = None,
    ) -> Embedder:
        """ImageNet features of a packaged backbone: useful before any training."""
        if not has_packaged_weights(name):
            raise SkulensError(f"no packaged ImageNet weights for {name}: use efficientnet_lite0/1/2 or a trained run")
        size = img_size or NATIVE_SIZES[name]
        mean, std = default_normalization(name, 3)
        spec = ModelSpec(name=name, num_classes=1, img_size=size, mean=mean, std=std)
        pre = Preprocessing(img_size=size, mean=mean, std=std)
        dev = resolve_device(device)
        engine = TorchEngine(prepare_model(create_model(spec), dev), RunConfig(spec, [], pre), dev)
        digest = _digest(sha256_file(packaged_weights_path(name)), pre)
        return cls(
            engine,
            digest,
            f"pretrained {name} (ImageNet features)",
            {"pretrained": name, "img_size": size},
            flip=flip,
            projection=projection,
        )

    def record(self) -> dict:
        """What a catalog stores about the model that made its vectors (its ``embedding_model``)."""
        return {"id": self.model_id, "dim": self.dim, "description": self.description, "source": self.source}

    @property
    def device(self) -> torch.device:
        return getattr(self.engine, "device", torch.device("cpu"))

    def input_tensor(self, image: ImageSource) -> torch.Tensor:
        return image_to_input(image, self.preprocessing)

    def input_array(self, image: ImageSource) -> np.ndarray:
        """The model input as a NumPy array (the same values as :meth:`input_tensor`)."""
        return image_to_array(image, self.preprocessing)

    @torch.inference_mode()
    def embed_tensors(self, x: torch.Tensor) -> np.ndarray:
        return self._projected(self.model_vectors(x))

    @torch.inference_mode()
    def model_vectors(self, x: torch.Tensor) -> np.ndarray:
        """The vectors before the projection: what a projection is fitted on."""
        return self.engine.embeddings(x, tta=self.flip)

    @property
    def model_dim(self) -> int:
        """The size of the model's own vectors (before the projection)."""
        return self.projection.in_dim if self.projection is not None else self.dim

    def search_vectors_of(self, model_vectors: np.ndarray) -> np.ndarray:
        """Vectors as the model gives them (computed elsewhere, e.g. in a shopper's browser running the
        same INT8 file) -> this embedder's search vectors: unit length, then the projection."""
        return self._projected(unit_rows(np.atleast_2d(np.asarray(model_vectors, dtype=np.float32))))

    def _projected(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.projection is None else self.projection.transform(vectors)

    def embed(self, images: Iterable[ImageSource]) -> np.ndarray:
        """Embeddings of readable images; raises ImageError on the first unusable one."""
        inputs = [self.input_array(img) for img in images]
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_tensors(self.engine.batch(inputs))

    def embed_many(
        self,
        images: list[ImageSource],
        batch_size: int = 16,
        projected: bool = True,
        progress: bool = False,
        workers: int | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Embeddings for a list, a bad image costing only itself: ``(vectors, errors)``; a row whose
        error is not None holds zeros. ``projected=False``: the vectors before the projection.
        ``workers`` threads decode the next images while the model runs (None: one per two cores)."""
        from tqdm import tqdm

        raw = not projected and self.projection is not None
        embed = self.model_vectors if raw else self.embed_tensors
        out = np.zeros((len(images), self.projection.in_dim if raw else self.dim), np.float32)
        errors: list[str | None] = [None] * len(images)
        pending: list[tuple[int, np.ndarray]] = []

        def flush():
            if pending:
                out[[i for i, _ in pending]] = embed(self.engine.batch([x for _, x in pending]))
                pending.clear()

        decoded = ordered_map(self.input_array, images, workers, ahead=2 * batch_size)
        bar = tqdm(decoded, total=len(images), desc="embedding", unit="img", disable=not progress)
        for i, (_, x, error) in enumerate(bar):
            if error is not None:
                errors[i] = error
            else:
                pending.append((i, x))
            if len(pending) >= batch_size:
                flush()
        flush()
        return out, errors


def _flip_id(model_id: str) -> str:
    return hashlib.sha256(f"{model_id}+flip".encode()).hexdigest()[:16]


def _digest(weights_sha256: str, pre: Preprocessing, engine: str = "torch", model_file: str | None = None) -> str:
    identity = {"weights": weights_sha256, "preprocessing": pre.to_dict()}
    if engine != "torch":
        identity["engine"] = engine  # unchanged for PyTorch, so older catalogs keep their id
    if model_file:
        identity["model_file"] = model_file  # the exported file: INT8 recipes differ for the same weights
    payload = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_embedder(
    run: str | Path | None = None,
    device: str = "auto",
    engine: str = "torch",
    flip: bool = False,
    projection: str | Path | None = None,
) -> Embedder:
    """A run's embedder, or the pretrained EfficientNet-Lite0 features when no run is given."""
    if run:
        return Embedder.from_run(run, device, engine, flip, projection)
    return Embedder.pretrained(device=device, flip=flip, projection=projection)


def embedder_from_source(source: dict, device: str = "auto") -> Embedder:
    """Rebuild the embedder a catalog recorded (see :attr:`Embedder.source`)."""
    projection = source.get("projection")
    if projection and not Path(projection).is_file():
        raise SkulensError(f"the catalog's vectors were projected with {projection}, which is no longer there")
    if source.get("run"):
        if not Path(source["run"]).is_dir():
            raise SkulensError(
                f"the catalog was embedded with run {source['run']}, which is no longer there: pass --run"
            )
        return Embedder.from_run(
            source["run"],
            device,
            source.get("engine", "torch").replace("onnx-int8", "onnx").replace("onnx-fp32", "onnx"),
            flip=bool(source.get("flip")),
            projection=projection,
        )
    return Embedder.pretrained(
        source.get("pretrained", "efficientnet_lite0"),
        source.get("img_size"),
        device,
        flip=bool(source.get("flip")),
        projection=projection,
    )
