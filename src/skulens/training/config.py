"""Training settings, one dataclass so the CLI, the Python API and the run's JSON agree."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from skulens.data.transforms import AugmentConfig


@dataclass
class TrainConfig:
    model: str = "efficientnet_lite0"
    epochs: int = 10
    img_size: int | None = None  # None: the architecture's native size
    batch_size: int | None = None  # None: 32 on a GPU, 16 on a CPU (measured faster there)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weighting: bool = False
    patience: int = 5  # early stopping: epochs without a better validation accuracy
    # Which weights the run keeps: "best" validation epoch, or "last" (the end of the schedule;
    # better when the validation split is too small to rank epochs, as in Grocery Store's 296 images).
    keep: str = "best"
    seed: int = 0
    ema_decay: float = 0.0  # 0 disables the weight EMA
    freeze_stages: int = 0  # leading backbone stages kept frozen (faster, less overfitting)
    pretrained: bool = True
    weights: str | None = None  # local safetensors to start from
    in_chans: int = 3
    # Splits trained on. ["train", "val"] is for a final model once the settings are chosen: the
    # validation figures are then on seen photos, so the last epoch is kept and nothing stops early.
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    resize: str = "crop"  # Preprocessing.resize: "crop" or "pad" (letterbox) to make photos square
    # > 0: add this weight x the loss at every upper level of the category tree, on the level's summed
    # leaf probabilities: a wrong leaf under the right parent then costs less than one elsewhere.
    tree_loss_weight: float = 0.0
    catalog_images: bool = False  # also train on the dataset's catalog (iconic) images
    catalog_repeats: int = 1  # each catalog image counts this many times per epoch
    # > 0: train an ArcFace embedding of this size (the catalog's search vectors) as the classifier
    embedding_dim: int = 0
    # Regularisers against memorising the training photos (mixing.py): the share of batches blended
    # with Mixup or CutMix (0: off; their Beta alphas; an alpha of 0 turns that one off), and
    # stochastic depth (the rate at which residual blocks are skipped in training; timm models).
    mix_prob: float = 0.0
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    drop_path: float = 0.0
    # Weight of the attribute losses (summed over attributes) against the category loss.
    attribute_loss_weight: float = 1.0
    eval_sizes: list[int] = field(default_factory=list)  # test-time sizes to choose from on validation
    device: str = "auto"
    # Under torchrun: BatchNorm statistics over the global batch, so N processes compute what one does.
    sync_bn: bool = True
    num_threads: int | None = None
    # DataLoader processes running the augmentation; None: 0 on a CPU (the 2 cores are busy with the
    # model), up to 8 on a GPU (one process cannot augment fast enough to keep it busy).
    workers: int | None = None
    # Training images are decoded once and kept at (img_size x cache_scale) on the shorter side, so
    # random-resized crops still see detail (package labels) rather than upsampled pixels.
    cache_scale: float = 1.6
    max_train_images: int | None = None  # for quick runs and tests: a class-balanced subset
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        aug = AugmentConfig(**data.pop("augment", {}))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, augment=aug)
