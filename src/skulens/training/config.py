"""Training settings: one dataclass, the one source of their defaults and help texts.

The CLI builds `skulens train`'s options from these fields (training/recipe.py), recipe files use
the field names as keys, and the run's ``config.json`` / ``recipe.toml`` record them. A field whose
default is ``None`` says in its metadata (``none``) what ``None`` stands for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from skulens.data.transforms import AugmentConfig


def setting(
    default, help: str, *, none: str | None = None, choices: tuple[str, ...] | None = None, flag_help: str | None = None
):
    """A TrainConfig field: its default (a list is copied per instance), what it does (``help``), what
    ``None`` means (``none``), the allowed values (``choices``), and the help of a negated CLI flag."""
    metadata = {"help": help}
    if none is not None:
        metadata["none"] = none
    if choices is not None:
        metadata["choices"] = choices
    if flag_help is not None:
        metadata["flag_help"] = flag_help
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    model: str = setting(
        "efficientnet_lite0",
        "efficientnet_lite0/1/2 (ImageNet weights), seedcnn, or a timm architecture (`skulens models`)",
    )
    epochs: int = setting(10, "epochs to train")
    img_size: int | None = setting(None, "training input size in pixels", none="the model's native size")
    batch_size: int | None = setting(
        None, "images per optimizer step, over all processes under torchrun", none="16 on a CPU, 32 on a GPU"
    )
    lr: float = setting(1e-3, "peak learning rate (AdamW, after the linear warmup, then cosine decay)")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warmup")
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy")
    class_weighting: bool = setting(False, "weight the loss by inverse class frequency")
    patience: int = setting(5, "early stopping: epochs without a better validation accuracy (0: off)")
    # "last" is better when the validation split is too small to rank epochs (Grocery Store's 296 images).
    keep: str = setting(
        "best", "the weights the run keeps: the best validation epoch or the last one", choices=("best", "last")
    )
    seed: int = setting(0, "seed for dataset splits and training")
    ema_decay: float = setting(0.0, "keep an EMA of the weights with this decay, e.g. 0.998 (0: off)")
    freeze_stages: int = setting(0, "keep the stem and the first N backbone stages frozen (faster on a CPU)")
    pretrained: bool = setting(True, "start from ImageNet weights", flag_help="random init instead of ImageNet weights")
    weights: str | None = setting(None, "start from this local .safetensors file", none="none")
    in_chans: int = setting(3, "input channels: 3 (colour) or 1 (grayscale)")
    # ["train", "val"] is for a final model once the settings are chosen: the validation figures are
    # then on seen photos, so the last epoch is kept and nothing stops early.
    train_splits: list[str] = setting(
        ["train"], "splits to train on (train,val for a final model: keeps the last epoch)"
    )
    resize: str = setting(
        "crop",
        "make photos square by a centre crop, or by padding with their border colour "
        "(kept in the run: prediction does the same)",
        choices=("crop", "pad"),
    )
    # A wrong leaf under the right parent then costs less than one elsewhere in the tree.
    tree_loss_weight: float = setting(
        0.0,
        "add this weight x the loss at each upper level of the category tree, "
        "on its summed leaf probabilities (0: off)",
    )
    catalog_images: bool = setting(False, "also train on the dataset's catalog (iconic) images")
    catalog_repeats: int = setting(1, "count each catalog image this many times per epoch")
    embedding_dim: int = setting(0, "train an ArcFace embedding of this size for visual search, e.g. 512 (0: off)")
    # Regularisers against memorising the training photos (mixing.py).
    mix_prob: float = setting(0.0, "share of batches blended with Mixup or CutMix (0: off)")
    mixup_alpha: float = setting(0.2, "Mixup's Beta alpha (0: CutMix only)")
    cutmix_alpha: float = setting(1.0, "CutMix's Beta alpha (0: Mixup only)")
    drop_path: float = setting(
        0.0, "stochastic depth: the rate at which residual blocks are skipped in training, e.g. 0.1 (timm models)"
    )
    attribute_loss_weight: float = setting(1.0, "weight of the attribute losses (summed) against the category loss")
    eval_sizes: list[int] = setting([], "test-time input sizes to choose from on the validation split")
    device: str = setting("auto", "auto, cpu or cuda")
    # Under torchrun: BatchNorm statistics over the global batch, so N processes compute what one does.
    sync_bn: bool = setting(
        True,
        "under torchrun, BatchNorm statistics over the whole batch",
        flag_help="under torchrun, let each process's BatchNorm see only its share of the batch",
    )
    num_threads: int | None = setting(None, "CPU threads", none="all cores")
    # One process cannot augment fast enough to keep a GPU busy; on a CPU the cores are busy with the model.
    workers: int | None = setting(
        None, "data-loading processes running the augmentation", none="0 on a CPU, up to 8 on a GPU"
    )
    # Random-resized crops then still see detail (package labels) rather than upsampled pixels.
    cache_scale: float = setting(1.6, "keep decoded training photos at this multiple of the input size")
    max_train_images: int | None = setting(
        None, "train on a class-balanced subset of this many images (quick runs, tests)", none="all"
    )
    augment: AugmentConfig = field(
        default_factory=AugmentConfig, metadata={"help": "augmentation (the recipe's [augment] table)"}
    )
    progress: bool = setting(True, "progress bars", flag_help="no progress bars")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        aug = AugmentConfig(**data.pop("augment", {}))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, augment=aug)
