"""PyTorch datasets over :class:`~skulens.data.datasets.Sample` lists.

Training decodes every image once into memory (at a reduced size) and augments from there: on a
2-core CPU, re-decoding JPEGs every epoch costs as much as a good part of the model. Unreadable
files are skipped with a warning and a count; one bad file never stops a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from skulens.data.datasets import Sample
from skulens.data.images import load_image
from skulens.data.transforms import (
    Preprocessing,
    image_to_input,
    pad_to_square,
    pil_to_uint8_tensor,
    resize_shorter_side,
)
from skulens.errors import ImageError

log = logging.getLogger(__name__)


@dataclass
class SkippedImage:
    path: str
    reason: str


class DecodedImages(Dataset):
    """Images decoded once into uint8 tensors; ``transform`` runs per access (augmentation)."""

    def __init__(
        self,
        samples: list[Sample],
        cache_side: int,
        in_chans: int,
        transform=None,
        desc: str = "decoding images",
        progress: bool = True,
        attributes: dict[str, dict] | None = None,
        pad_square: bool = False,
    ):
        self.transform = transform
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        # With ``attributes`` (ImageDataset.attributes), items are (x, label, {name: target}).
        self.attributes = attributes or {}
        self.attribute_targets: list[dict[str, torch.Tensor]] = []
        self.skipped: list[SkippedImage] = []
        for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, leave=False):
            try:
                img = load_image(sample.path, draft_size=cache_side)
            except ImageError as exc:
                self.skipped.append(SkippedImage(str(sample.path), str(exc)))
                continue
            if pad_square:  # Preprocessing.resize == "pad": crops are then taken from the padded square
                img = pad_to_square(img)
            img = resize_shorter_side(img, cache_side) if min(img.size) > cache_side else img
            self.images.append(pil_to_uint8_tensor(img, in_chans))
            self.labels.append(sample.label)
            if self.attributes:
                self.attribute_targets.append(encode_attribute_targets(sample.attributes, self.attributes))
        if self.skipped:
            log.warning("skipped %d unreadable image(s), e.g. %s", len(self.skipped), self.skipped[0].reason)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        x = self.transform(img) if self.transform else img
        if self.attributes:
            return x, self.labels[i], self.attribute_targets[i]
        return x, self.labels[i]


def encode_attribute_targets(values: tuple, specs: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Loss targets: a class index (-1: unknown) per softmax attribute, a multi-hot vector per tag
    attribute (all -1: unknown). Samples without attribute data (e.g. catalog images) are all unknown."""
    out = {}
    for position, (name, spec) in enumerate(specs.items()):
        value = values[position] if position < len(values) else None
        if spec["kind"] == "softmax":
            out[name] = torch.tensor(-1 if value is None else value, dtype=torch.long)
        else:
            target = torch.full((len(spec["values"]),), -1.0)
            if value is not None:
                target.zero_()
                target[list(value)] = 1.0
            out[name] = target
    return out


class PreprocessedImages(Dataset):
    """Evaluation view: decode + the shared preprocessing on every access; bad files yield None."""

    def __init__(self, samples: list[Sample], pre: Preprocessing, img_size: int | None = None):
        self.samples = samples
        self.pre = pre
        self.img_size = img_size or pre.img_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        try:
            return image_to_input(sample.path, self.pre, self.img_size), sample.label, i, ""
        except ImageError as exc:
            return None, sample.label, i, str(exc)


def collate_skip_bad(batch):
    """Collate evaluation items, keeping the indices of the images that failed to decode."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[3]) for b in batch if b[0] is None]
    if good:
        x = torch.stack([b[0] for b in good])
        y = torch.tensor([b[1] for b in good])
        idx = torch.tensor([b[2] for b in good])
    else:
        x, y, idx = None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return x, y, idx, bad
