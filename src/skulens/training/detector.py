"""Training the class-agnostic product detector on composites: no box is drawn by hand.

Each step composes a fresh batch of scenes from the train split (shopper photos pasted whole, the
dataset's catalog images cut out: data.composition), so the detector never sees the same scene
twice. A fixed set of val composites scores it as it learns (mAP@0.5, found rate); the best
weights by val mAP are kept, and the score threshold is chosen on the same val composites.

:class:`DetectorConfig` is the one source of the detector's training defaults; a recipe file
(``recipes/detector/grocery.toml``) sets its fields at the top level and the composition's in a
``[composition]`` table.
"""

from __future__ import annotations

import copy
import difflib
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from skulens.data.composition import Composite, CompositionConfig, SceneComposer, make_eval_set
from skulens.data.datasets import ImageDataset, load_dataset
from skulens.engines.detector import Detector, save_detector
from skulens.errors import SkulensError
from skulens.evaluation.detection import choose_score_threshold, detection_figures, map50, run_detector
from skulens.models.detector import DetectorSpec, create_detector


@dataclass
class DetectorConfig:
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0/1/2, from the packaged ImageNet weights
    input_size: int = 320  # longer side in pixels, and the side of the training composites
    fpn_channels: int = 64
    head_convs: int = 2
    frozen_blocks: int = 4
    pretrained: bool = True
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3  # AdamW peak, after a linear warmup, then cosine decay
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 10.0
    eval_every: int = 200  # steps between val evaluations (and one at the end)
    val_composites: int = 48
    max_false_per_image: float = 0.2  # the score threshold is the lowest that keeps val's false boxes under this
    score_threshold: float | None = None  # None: chosen on val
    seed: int = 0
    num_threads: int | None = None  # None: torch's default (all cores)
    progress: bool = True
    composition: CompositionConfig = field(default_factory=CompositionConfig)

    def spec(self) -> DetectorSpec:
        return DetectorSpec(self.backbone, self.input_size, self.fpn_channels, self.head_convs, self.frozen_blocks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "detector config") -> DetectorConfig:
        data = dict(data)
        composition = CompositionConfig.from_dict(data.pop("composition", {}) or {})
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1)
                raise SkulensError(
                    f"{where}: unknown setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                )
            _check_type(key, value, cls.__dataclass_fields__[key].default, where)
        config = cls(**data, composition=composition)
        config.check()
        return config

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.val_composites < 1 or self.eval_every < 1:
            raise SkulensError("detector config: steps, batch_size, val_composites and eval_every must be at least 1")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise SkulensError(f"detector config: score_threshold must be between 0 and 1, not {self.score_threshold}")


def _check_type(key: str, value, default, where: str) -> None:
    if default is None or value is None:
        return
    expected = float if isinstance(default, float) else type(default)
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int) and not isinstance(value, bool))
    if isinstance(value, bool) and expected is not bool:
        ok = False
    if not ok:
        raise SkulensError(f"{where}: {key} must be {expected.__name__}, not {value!r}")


def load_detector_config(recipe: str | Path | None = None, **overrides) -> DetectorConfig:
    """The defaults, then the recipe file's fields, then ``overrides`` (None values are ignored)."""
    data: dict = {}
    if recipe is not None:
        path = Path(recipe)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SkulensError(f"{path}: cannot read recipe ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SkulensError(f"{path}: not valid TOML ({exc})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return DetectorConfig.from_dict(data, where=str(recipe or "detector config"))


def _lr_factor(step: int, config: DetectorConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch(composites: list[Composite]) -> tuple[list[torch.Tensor], list[dict]]:
    images = [torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in composites]
    targets = [
        {"boxes": torch.from_numpy(c.boxes).float(), "labels": torch.zeros(len(c.boxes), dtype=torch.int64)}
        for c in composites
    ]
    return images, targets


def _val_split(dataset: ImageDataset) -> str:
    return "val" if dataset.has_split("val") else "train"


def _evaluate(model, spec: DetectorSpec, val: list[Composite]) -> tuple[float, list]:
    raw = run_detector(Detector.from_model(model, spec, 0.5), val, progress=False)
    model.train()
    return map50(raw, val), raw


def _train_steps(model, composer: SceneComposer, val: list[Composite], config: DetectorConfig) -> dict:
    """The optimisation loop; returns the best state by val mAP and the history of evaluations."""
    spec = config.spec()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    best = {"map50": -1.0, "state": None, "step": 0}
    history = []
    model.train()
    bar = tqdm(range(config.steps), desc="training detector", unit="step", disable=not config.progress)
    for step in bar:
        first = step * config.batch_size
        images, targets = _batch([composer.composite(config.seed, first + i) for i in range(config.batch_size)])
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            score, _ = _evaluate(model, spec, val)
            history.append({"step": step + 1, "val_map50": round(score, 4), "loss": round(loss.item(), 4)})
            bar.write(f"step {step + 1}: val mAP@0.5 {score:.3f}")
            if score > best["map50"]:
                best = {"map50": score, "state": copy.deepcopy(model.state_dict()), "step": step + 1}
    return {**best, "history": history}


def train_detector(data: str | Path | ImageDataset, out_dir: str | Path, config: DetectorConfig | None = None) -> dict:
    """Train a detector on composites of ``data``'s train split; write it to ``out_dir`` (weights +
    detector.json) and return detector.json's record."""
    config = config or DetectorConfig()
    config.check()
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, seed=config.seed)
    composition = replace(config.composition, canvas_size=config.input_size)
    composer = SceneComposer(dataset, "train", composition)
    val_split = _val_split(dataset)
    val = make_eval_set(
        dataset, val_split, config.val_composites, seed=config.seed + 1, config=composition, progress=config.progress
    )
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model = create_detector(config.spec(), pretrained=config.pretrained)
    start = time.perf_counter()
    result = _train_steps(model, composer, val, config)
    seconds = time.perf_counter() - start
    model.load_state_dict(result["state"])
    _, raw = _evaluate(model, config.spec(), val)
    threshold = config.score_threshold
    if threshold is None:
        threshold = choose_score_threshold(raw, val, config.max_false_per_image)
    record = {
        "score_threshold": threshold,
        "composition": composition.to_dict(),
        "training": {**config.to_dict(), "dataset": str(dataset.source or dataset.root)},
        "val": {**detection_figures(raw, val, threshold), "split": val_split, "best_step": result["step"]},
        "history": result["history"],
        "train_seconds": round(seconds, 1),
    }
    save_detector(out_dir, model, config.spec(), record)
    return record
