"""`skulens train` (its options are built from TrainConfig: training/recipe.py) and `skulens models`."""

from __future__ import annotations

from skulens.cli.options import EXIT_OK, add_csv_columns, columns_given

TRAIN_HELP = (
    "train a classifier; writes a run folder (several processes or machines: "
    "torchrun --nproc_per_node=N -m skulens train ...)"
)
TRAIN_DESCRIPTION = (
    "Train a classifier and write a run folder. Settings come from the defaults below, then "
    "the --config recipe file (TOML: these options' recipe keys at the top level, an [augment] "
    "and a [data] table), then the flags given. The run folder keeps the resolved recipe: "
    "`skulens train DATA --config RUN/recipe.toml` trains it again."
)


def add_parsers(sub) -> None:
    # The options are added when `train` is parsed or asked for help: TrainConfig imports torch.
    tr = sub.add_parser("train", help=TRAIN_HELP, description=TRAIN_DESCRIPTION, populate=_train_arguments)
    tr.set_defaults(handler=cmd_train)
    sub.add_parser("models", help="list the model names skulens can train").set_defaults(handler=cmd_models)


def _train_arguments(p) -> None:
    from skulens.training.recipe import add_arguments

    p.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    p.add_argument(
        "--config",
        metavar="RECIPE",
        default=None,
        help="recipe file (.toml), e.g. recipes/grocery-lite2.toml or RUN/recipe.toml; flags override it",
    )
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --out, with the settings it started with"
    )
    add_arguments(p)
    add_csv_columns(p, heads=True, defaults="recipe")


def cmd_train(args) -> int:
    from skulens.api import Run
    from skulens.training.distributed import is_main
    from skulens.training.recipe import overrides_from_args

    overrides = overrides_from_args(args)
    if columns_given(args):
        overrides["data"] = columns_given(args)
    result = Run.train(args.dataset, out=args.out, recipe=args.config, resume=args.resume, **overrides).result
    if not is_main():  # under torchrun, rank 0 reports for the job
        return EXIT_OK
    print(
        f"trained {result.epochs_run} epoch(s) in {result.train_seconds:.0f} s; best validation top-1 "
        f"{100 * result.best_val_acc:.2f}% at epoch {result.best_epoch}"
        + (f"; {result.skipped_images} unreadable image(s) skipped" if result.skipped_images else "")
    )
    print(f"run folder: {result.run_dir} (model.safetensors, config.json, recipe.toml, log.csv, curves.png)")
    return EXIT_OK


def cmd_models(args) -> int:
    from skulens.models.registry import list_models

    names = list_models()
    print("\n".join(names[:4]))
    print(f"... and {len(names) - 4} more timm architectures (random init or --weights FILE)")
    return EXIT_OK
