"""Batched class probabilities for a list of samples, through any engine (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from skulens.data.datasets import ImageDataset, Sample
from skulens.data.pipeline import ordered_map
from skulens.data.transforms import Preprocessing, image_to_input
from skulens.errors import DatasetError, SkulensError

# Normalised NCHW float batch -> class probabilities [N, C] (on the CPU).
ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


def split_samples(dataset: ImageDataset, split: str, classes: list[str]) -> list[Sample]:
    """A split's samples with their labels in the model's class order (a dataset may list its classes
    in another order, or hold only some of them); a class the model does not know is an error."""
    samples = dataset.split(split)
    if list(dataset.classes) != list(classes):
        unknown = sorted(set(dataset.classes) - set(classes))
        if unknown:
            raise SkulensError(f"the dataset has classes the model does not know: {', '.join(unknown[:5])}")
        remap = {i: classes.index(c) for i, c in enumerate(dataset.classes)}
        samples = [replace(s, label=remap[s.label]) for s in samples]
    if not samples:
        have = ", ".join(sorted({s.split for s in dataset.samples}))
        raise DatasetError(f"{dataset.root}: no images in split {split!r} (it has: {have})")
    return samples


class OutputCollector:
    """A class-probability function (what :func:`dataset_probabilities` takes) over an engine that
    also keeps the attribute probabilities of every batch it sees: one pass gives both."""

    def __init__(self, engine, tta: bool = False):
        self.engine = engine
        self.tta = tta
        self._batches: list[dict[str, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs, attrs = self.engine.outputs(x, self.tta)
        self._batches.append(attrs)
        return probs

    def attribute_probs(self) -> dict[str, np.ndarray]:
        if not self._batches:
            return {}
        return {name: torch.cat([b[name] for b in self._batches]).numpy() for name in self._batches[0]}


@torch.no_grad()
def dataset_probabilities(
    predict: ProbabilityFn,
    samples: list[Sample],
    pre: Preprocessing,
    *,
    img_size: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "evaluating",
    workers: int | None = None,
):
    """Probabilities for every readable sample: ``(probs [n, C], labels [n], kept_indices, failures)``.
    ``workers`` threads decode the next photos while ``predict`` runs a batch (None: one per two cores)."""
    probs, kept, failures, pending = [], [], [], []

    def flush():
        probs.append(predict(torch.stack([x for _, x in pending])))
        kept.extend(i for i, _ in pending)
        pending.clear()

    decoded = ordered_map(lambda s: image_to_input(s.path, pre, img_size), samples, workers, ahead=2 * batch_size)
    bar = tqdm(decoded, total=len(samples), desc=desc, unit="img", disable=not progress, leave=False)
    for i, (sample, x, error) in enumerate(bar):
        if error is not None:
            failures.append((sample.path, error))
            continue
        pending.append((i, x))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), failures
    kept = np.array(kept, np.int64)
    labels = np.array([samples[i].label for i in kept], np.int64)
    return torch.cat(probs).numpy(), labels, kept, failures
