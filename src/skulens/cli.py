"""The `skulens` command line. Errors the user can fix print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from skulens import __version__
from skulens.cli_catalog import CATALOG_COMMANDS, add_catalog_commands
from skulens.serving.cli import SERVE_COMMANDS, add_serve_commands
from skulens.privacy.cli import PRIVACY_COMMANDS, add_privacy_commands
from skulens.errors import SkulensError

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _add_dataset_args(p: argparse.ArgumentParser, attributes: bool = False) -> None:
    g = p.add_argument_group("CSV manifest columns (when DATASET is a .csv)")
    g.add_argument("--image-column", default="image", help="column with the image path (default: image)")
    g.add_argument("--label", default="label", help="column with the class label (default: label)")
    g.add_argument("--split-column", default="split", help="column with train/val/test (default: split; "
                   "absent: a seeded stratified split)")
    g.add_argument("--tree-columns", default=None,
                   help="comma-separated columns from the top of the category tree down, e.g. "
                        "master_category,sub_category (the label is the leaf)")
    if attributes:  # train/evaluate only: `report` has an --attribute-columns of its own
        _add_attribute_args(g)
    p.add_argument("--seed", type=int, default=0, help="seed for splits and training (default: 0)")


def _add_attribute_args(g) -> None:
    # dest names of their own, so they never mix with another command's --attribute-columns
    g.add_argument("--attribute-columns", dest="head_attributes", default=None,
                   help="comma-separated columns with one value per image, e.g. colour,usage,gender: a head each, "
                        "trained with the category (empty cells are unknown and left out)")
    g.add_argument("--tag-columns", dest="head_tags", default=None,
                   help="comma-separated columns of '|'-separated tags that can co-occur (a sigmoid per tag; "
                        "'-' = none of them, empty = unknown)")


def _load_dataset(args):
    from skulens.data.datasets import CsvColumns, load_dataset

    cols = CsvColumns(image=args.image_column, label=args.label, split=args.split_column,
                      tree=[c.strip() for c in args.tree_columns.split(",")] if args.tree_columns else None,
                      attributes=_columns(getattr(args, "head_attributes", None)),
                      tags=_columns(getattr(args, "head_tags", None)))
    return load_dataset(args.dataset, csv_columns=cols, seed=args.seed)


def _dataset_for_run(args, run: str, path: str | None, *, required: bool = True):
    """The dataset to score or calibrate a run on. PATH given: as the flags say, except that a CSV given
    without column flags is read with the columns the run was trained with (no repeat of the training
    flags). No PATH: the run's recorded training dataset; when it is not on this machine, an error
    (``required``) or None."""
    from skulens.checkpoint import read_config
    from skulens.data.datasets import load_dataset, recorded_columns

    train_args = read_config(run).train_args
    columns = recorded_columns(train_args)
    if path:
        flags_given = (args.label != "label" or args.tree_columns or getattr(args, "head_attributes", None)
                       or getattr(args, "head_tags", None))
        if columns is not None and not flags_given and Path(path).is_file():
            return load_dataset(path, csv_columns=columns, seed=args.seed)
        args.dataset = path
        return _load_dataset(args)
    recorded = train_args.get("dataset")
    if not recorded or not Path(recorded).exists():
        if required:
            raise SkulensError(f"{run}: its training dataset ({recorded or 'not recorded'}) is not here; pass DATASET")
        return None
    return load_dataset(recorded, csv_columns=columns, seed=train_args.get("seed", 0))


def _columns(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] or None if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skulens", description="Product image recognition: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"skulens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="counts, unreadable files, duplicates, leakage, imbalance")
    check.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_dataset_args(check)

    tr = sub.add_parser("train", help="train a classifier; writes a run folder (several processes or machines: "
                                      "torchrun --nproc_per_node=N -m skulens train ...)")
    tr.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    tr.add_argument("--model", default="efficientnet_lite0",
                    help="efficientnet_lite0 (default, ImageNet weights), efficientnet_lite1/2, seedcnn, or a timm name")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--img-size", type=int, default=None, help="training input size (default: the model's native size)")
    tr.add_argument("--batch-size", type=int, default=None,
                    help="images per optimizer step, over all processes under torchrun (default: 16 on a CPU, 32 on a GPU)")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--weight-decay", type=float, default=0.05)
    tr.add_argument("--warmup-epochs", type=float, default=1.0)
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--class-weighting", action="store_true", help="weight the loss by inverse class frequency")
    tr.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs (0: off)")
    tr.add_argument("--keep", default="best", choices=["best", "last"],
                    help="keep the best validation epoch (default) or the last one")
    tr.add_argument("--ema-decay", type=float, default=0.0, help="keep an EMA of the weights (e.g. 0.998)")
    tr.add_argument("--freeze-stages", type=int, default=0, help="freeze the stem and the first N stages")
    tr.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights")
    tr.add_argument("--weights", default=None, help="start from a local .safetensors file")
    tr.add_argument("--grayscale", action="store_true", help="train on 1-channel images")
    tr.add_argument("--catalog-images", action="store_true", help="also train on the dataset's catalog images")
    tr.add_argument("--catalog-repeats", type=int, default=1, help="count each catalog image N times per epoch")
    tr.add_argument("--embedding-dim", type=int, default=0,
                    help="train an ArcFace embedding of this size for visual search (e.g. 512)")
    tr.add_argument("--mix-prob", type=float, default=0.0,
                    help="share of batches blended with Mixup or CutMix (regularisation; default 0: off)")
    tr.add_argument("--mixup-alpha", type=float, default=0.2, help="Mixup's Beta alpha (0: CutMix only)")
    tr.add_argument("--cutmix-alpha", type=float, default=1.0, help="CutMix's Beta alpha (0: Mixup only)")
    tr.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate while training (e.g. 0.1)")
    tr.add_argument("--attribute-loss-weight", type=float, default=1.0,
                    help="weight of the attribute losses against the category loss (default 1)")
    tr.add_argument("--eval-sizes", default="", help="comma-separated test-time sizes to choose from on validation")
    tr.add_argument("--cache-scale", type=float, default=1.6,
                    help="keep decoded training photos at this multiple of --img-size (default 1.6)")
    tr.add_argument("--max-train-images", type=int, default=None, help="train on a class-balanced subset")
    tr.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    tr.add_argument("--scale-min", type=float, default=0.25, help="random-resized-crop's smallest area share")
    tr.add_argument("--color-jitter", type=float, default=0.3, help="brightness/contrast/saturation jitter (0: off)")
    tr.add_argument("--hue-jitter", type=float, default=None,
                    help="hue shift, a share of the colour wheel (default min(0.05, color-jitter/6); 0 where colour "
                         "tells classes apart)")
    tr.add_argument("--resize", default="crop", choices=["crop", "pad"],
                    help="make photos square by a centre crop (default) or by padding with their border colour")
    tr.add_argument("--train-splits", default="train",
                    help="comma-separated splits to train on (e.g. train,val for a final model; keeps the last epoch)")
    tr.add_argument("--tree-loss-weight", type=float, default=0.0,
                    help="add this weight x the loss at each upper level of the category tree (default 0: off)")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tr.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    tr.add_argument("--no-sync-bn", action="store_true",
                    help="under torchrun, let each process's BatchNorm see only its share of the batch")
    tr.add_argument("--workers", type=int, default=None,
                    help="data-loading processes for augmentation (default: 0 on a CPU, up to 8 on a GPU)")
    tr.add_argument("--out", required=True, help="run folder to write")
    tr.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_dataset_args(tr, attributes=True)

    ev = sub.add_parser("evaluate", help="top-1/top-5, precision/recall/F1, confusion matrix, tree levels")
    ev.add_argument("run", help="run folder written by `skulens train`")
    ev.add_argument("dataset")
    ev.add_argument("--split", default="test")
    ev.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    ev.add_argument("--img-size", type=int, default=None, help="override the run's input size")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"],
                    help="auto: ONNX Runtime on a CPU when the run has an up-to-date export, else PyTorch")
    ev.add_argument("--out", default=None, help="report folder (default: RUN/eval-SPLIT)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--no-progress", action="store_true")
    _add_dataset_args(ev, attributes=True)

    pr = sub.add_parser("predict", help="label, confidence and category path per image")
    pr.add_argument("run")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--tta", action="store_true")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"],
                    help="auto: ONNX Runtime on a CPU when the run has an up-to-date export, else PyTorch")
    pr.add_argument("--json", action="store_true", help="print a JSON list")

    xp = sub.add_parser("explain", help="why the model said what it said: Grad-CAM heat map, feature maps")
    xp.add_argument("run", help="run folder written by `skulens train`")
    xp.add_argument("image", help="the photo to explain")
    xp.add_argument("--out", default=None, help="write the Grad-CAM heat map over the photo here (.png/.jpg)")
    xp.add_argument("--feature-maps", default=None, metavar="FILE", help="write the first layers' feature maps here")
    xp.add_argument("--class", dest="class_name", default=None, metavar="CLASS",
                    help="explain this class (label or index) instead of the top prediction")
    xp.add_argument("--layers", type=int, default=2, help="how many first layers --feature-maps shows (default 2)")
    xp.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    xp.add_argument("--json", action="store_true", help="print the answer as JSON")

    ex = sub.add_parser("export", help="export a run to ONNX (and INT8), checked against PyTorch")
    ex.add_argument("run")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--int8", action="store_true", help="also write a static-quantized INT8 model")
    ex.add_argument("--calibration", metavar="DATASET", default=None,
                    help="dataset for calibration (train split) and checks (val split); default: the run's own")
    ex.add_argument("--calibration-images", type=int, default=300)
    ex.add_argument("--check-images", type=int, default=500)
    ex.add_argument("--calibration-method", default="minmax", choices=["minmax", "percentile", "entropy"],
                    help="how INT8 activation ranges are set (percentile clips rare outliers)")
    ex.add_argument("--max-top1-drop", type=float, default=1.0, help="INT8 tolerance in top-1 points (default 1.0)")
    ex.add_argument("--json", action="store_true")
    _add_dataset_args(ex)

    ca = sub.add_parser("calibrate", help="pick back-off and 'unknown' thresholds on the validation split")
    ca.add_argument("run", help="run folder written by `skulens train`")
    ca.add_argument("dataset", nargs="?", default=None, help="default: the dataset the run was trained on")
    ca.add_argument("--split", default="val", help="held-out split to calibrate on (default: val)")
    ca.add_argument("--target-precision", type=float, default=0.95,
                    help="share of the answers at each tree level that must be right (default 0.95)")
    ca.add_argument("--unknown-reject-rate", type=float, default=None,
                    help="set the 'unknown' threshold so this share of validation photos gets it (e.g. 0.02) "
                         "instead of from the target precision")
    ca.add_argument("--tta", action="store_true", help="calibrate with flip test-time augmentation")
    ca.add_argument("--device", default="auto")
    ca.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"])
    ca.add_argument("--json", action="store_true", help="print the thresholds record as JSON")
    ca.add_argument("--no-progress", action="store_true")
    _add_dataset_args(ca)

    rp = sub.add_parser("report", help="catalog analytics: categories, attributes, colours, what shoppers photograph")
    rp.add_argument("dataset", metavar="INPUT", help="dataset folder, products CSV, or recognitions log (.jsonl)")
    rp.add_argument("--out", required=True, help="folder for index.html, the PNG charts and the CSV tables")
    rp.add_argument("--predictions", metavar="LOG", default=None, help="also report this recognitions log (.jsonl)")
    rp.add_argument("--attribute-columns", default=None,
                    help="CSV: comma-separated attribute columns (default: other columns with few distinct values)")
    rp.add_argument("--colour-sample", type=int, default=500, help="photos read for colours (default 500; 0: none)")
    rp.add_argument("--period", default="auto", choices=["auto", "day", "week"],
                    help="recognitions over time per day or week (auto: by the log's span)")
    rp.add_argument("--title", default=None)
    rp.add_argument("--json", action="store_true", help="print a summary as JSON")
    rp.add_argument("--no-progress", action="store_true")
    _add_dataset_args(rp)

    sub.add_parser("models", help="list the model names skulens can train")

    demo = sub.add_parser("demo", help="train, evaluate and predict on the small Grocery Store sample shipped with skulens")
    demo.add_argument("--out", default="runs/demo", help="run folder (replaced if it holds an earlier demo)")
    demo.add_argument("--epochs", type=int, default=12)
    add_catalog_commands(sub)
    add_serve_commands(sub)
    add_privacy_commands(sub)
    return parser


def cmd_data_check(args) -> int:
    from skulens.data.check import check_dataset, has_problems, render_report

    report = check_dataset(_load_dataset(args), progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render_report(report)
    return EXIT_PARTIAL if has_problems(report) else 0


def cmd_train(args) -> int:
    from skulens.data.transforms import AugmentConfig
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import TRAIN_STATE_FILE, train

    if args.resume:
        state_file = Path(args.out) / TRAIN_STATE_FILE
        if not state_file.is_file():
            raise SkulensError(f"{args.out}: nothing to resume (no {TRAIN_STATE_FILE})")
        # A resumed run continues with the settings it started with.
        cfg = TrainConfig.from_dict(json.loads(state_file.read_text())["config"])
        cfg.progress = not args.no_progress
        dataset = _load_dataset(args)
        result = train(cfg, dataset, args.out, resume=True)
    else:
        if args.epochs < 1:
            raise SkulensError("--epochs must be at least 1")
        aug = (AugmentConfig(scale_min=1.0, hflip=0, color_jitter=0, affine_prob=0) if args.no_augment else
               AugmentConfig(scale_min=args.scale_min, color_jitter=args.color_jitter, hue_jitter=args.hue_jitter))
        cfg = TrainConfig(
            model=args.model, epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
            class_weighting=args.class_weighting, patience=args.patience, keep=args.keep, seed=args.seed,
            ema_decay=args.ema_decay,
            freeze_stages=args.freeze_stages, pretrained=not args.no_pretrained, weights=args.weights,
            in_chans=1 if args.grayscale else 3, catalog_images=args.catalog_images,
            catalog_repeats=args.catalog_repeats, embedding_dim=args.embedding_dim, num_threads=args.threads,
            workers=args.workers, sync_bn=not args.no_sync_bn,
            attribute_loss_weight=args.attribute_loss_weight, mix_prob=args.mix_prob, mixup_alpha=args.mixup_alpha,
            cutmix_alpha=args.cutmix_alpha, drop_path=args.drop_path,
            eval_sizes=[int(s) for s in args.eval_sizes.split(",") if s.strip()], device=args.device,
            resize=args.resize, tree_loss_weight=args.tree_loss_weight,
            train_splits=[s.strip() for s in args.train_splits.split(",") if s.strip()],
            max_train_images=args.max_train_images, cache_scale=args.cache_scale, augment=aug, progress=not args.no_progress)
        result = train(cfg, _load_dataset(args), args.out)
    from skulens.training.distributed import is_main

    if not is_main():  # under torchrun, rank 0 reports for the job
        return 0
    print(f"trained {result.epochs_run} epoch(s) in {result.train_seconds:.0f} s; best validation top-1 "
          f"{100 * result.best_val_acc:.2f}% at epoch {result.best_epoch}"
          + (f"; {result.skipped_images} unreadable image(s) skipped" if result.skipped_images else ""))
    print(f"run folder: {result.run_dir} (model.safetensors, config.json, log.csv, curves.png)")
    return 0


def cmd_evaluate(args) -> int:
    from skulens.evaluation.report import evaluate_run

    dataset = _dataset_for_run(args, args.run, args.dataset)
    m = evaluate_run(args.run, dataset, args.split, tta=args.tta, img_size=args.img_size, device=args.device,
                     engine=args.engine, out_dir=args.out, progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "confusion_matrix"}, indent=2))
        return 0
    print(f"{args.split} ({m['engine']}): {m['n_images']} images, top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, "
          f"macro F1 {100 * m['macro_f1']:.2f}%")
    for level in m.get("levels", []):
        print(f"  {level['level']}: {100 * level['accuracy']:.2f}% ({level['n_nodes']} nodes)")
    for name, a in m.get("attributes", {}).items():
        what = f"accuracy {100 * a['accuracy']:.2f}%" if a["kind"] == "softmax" else f"mAP {100 * a['mAP']:.2f}%"
        print(f"  attribute {name}: {what} ({a['n_known']} images with a known value)")
    if m["unreadable"]:
        print(f"  {len(m['unreadable'])} unreadable image(s) left out", file=sys.stderr)
    print(f"report: {m['out_dir']}/report.md, metrics.json, confusion_matrix.png")
    return 0


def _expand_images(items: list[str]) -> list[Path]:
    from skulens.data.images import is_image_file

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                print(f"skulens: error: {p}: no images in this folder", file=sys.stderr)
            paths.extend(found)
        else:
            paths.append(p)  # missing or bad files get their own error line when read
    return paths


def cmd_predict(args) -> int:
    from skulens.recognition.recognizer import Recognizer

    recognizer = Recognizer.load(args.run, engine=args.engine, device=args.device, tta=args.tta)
    paths = _expand_images(args.images)
    failed = len(paths) == 0
    records = []
    for path, pred, error in recognizer.predict_files(paths, top_k=args.top_k):
        if error:
            failed = True
            print(f"skulens: error: {error}", file=sys.stderr)
            records.append({"source": str(path), "error": error})
            continue
        if args.json:
            records.append(pred.to_dict())
        else:
            attrs = "".join(f"\t{name}={_attribute_text(a)}" for name, a in pred.attributes.items())
            print(f"{path}\t{pred.label}\t{100 * pred.confidence:.1f}%\t{' > '.join(pred.path)}{attrs}", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return EXIT_PARTIAL if failed else 0


def _attribute_text(a: dict) -> str:
    if a.get("confidence") is None:  # tags: "summer|sale" (each one's probability is in --json)
        return a["value"]
    return f"{a['value']} ({100 * a['confidence']:.0f}%)"


def cmd_export(args) -> int:
    from skulens.engines.onnx_export import export_onnx

    dataset = _dataset_for_run(args, args.run, args.calibration, required=False)
    report = export_onnx(args.run, int8=args.int8, dataset=dataset, calibration_images=args.calibration_images,
                         check_images=args.check_images, max_top1_drop_int8=args.max_top1_drop,
                         calibration_method=args.calibration_method)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    for check in report.checks:
        accuracy = ""
        if check.torch_top1 is not None:
            accuracy = (f", top-1 {100 * check.onnx_top1:.2f}% vs PyTorch {100 * check.torch_top1:.2f}% "
                        f"({check.top1_change_points:+.2f} points)")
        print(f"{Path(args.run) / check.file}: {check.size_bytes / 1e6:.1f} MB, top-1 agreement with PyTorch "
              f"{100 * check.top1_agreement:.1f}% on {check.n_images} images{accuracy}")
    if dataset is None:
        print("checked on random inputs only: pass --calibration DATASET to check on real images")
    return 0


def cmd_models(args) -> int:
    from skulens.models.registry import list_models

    names = list_models()
    print("\n".join(names[:4]))
    print(f"... and {len(names) - 4} more timm architectures (random init or --weights FILE)")
    return 0


def demo_dataset_path() -> Path:
    return Path(__file__).parent / "demo_data" / "grocery-mini"


def cmd_demo(args) -> int:
    import shutil

    from skulens.data.datasets import load_dataset
    from skulens.evaluation.report import evaluate_run
    from skulens.recognition.recognizer import Recognizer
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train

    out = Path(args.out)
    if out.exists():
        if not (out / "demo.json").is_file():
            raise SkulensError(f"{out} exists and is not an earlier demo run; choose another --out")
        shutil.rmtree(out)
    data = demo_dataset_path()
    dataset = load_dataset(data)
    print(f"demo: {len(dataset.samples)} Grocery Store photos of {len(dataset.classes)} products ({data})")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=args.epochs, img_size=160, lr=1e-3, freeze_stages=3,
                      catalog_images=True, patience=0)
    result = train(cfg, dataset, out)
    (out / "demo.json").write_text(json.dumps({"dataset": str(data)}))
    print(f"trained {result.epochs_run} epochs in {result.train_seconds:.0f} s, best val top-1 "
          f"{100 * result.best_val_acc:.1f}%")
    m = evaluate_run(out, dataset, "test")
    levels = ", ".join(f"{lv['level']} {100 * lv['accuracy']:.1f}%" for lv in m.get("levels", []))
    print(f"test: top-1 {100 * m['top1']:.1f}%, top-5 {100 * m['top5']:.1f}% ({levels}); report in {m['out_dir']}")
    recognizer = Recognizer.load(out)
    for sample in dataset.split("test")[::4]:
        pred = recognizer.predict(sample.path)
        print(f"  {sample.path.name:34s} -> {' > '.join(pred.path)} ({100 * pred.confidence:.0f}%)")
    print(f"next: skulens predict {out} YOUR_PHOTO.jpg")
    return 0


COMMANDS = {**CATALOG_COMMANDS, **SERVE_COMMANDS, **PRIVACY_COMMANDS, "demo": cmd_demo, "export": cmd_export, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "models": cmd_models}


def cmd_calibrate(args) -> int:
    from skulens.recognition.calibration import calibrate_run

    dataset = _dataset_for_run(args, args.run, args.dataset)
    record = calibrate_run(args.run, dataset, args.split, target_precision=args.target_precision,
                           unknown_reject_rate=args.unknown_reject_rate, tta=args.tta, engine=args.engine,
                           device=args.device, progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"calibrated on {record['n_images']} {args.split} images for {100 * args.target_precision:g}% precision "
          f"per level: {record['path']}")
    for level in record["levels"]:
        if level["threshold"] is None:
            print(f"  {level['level']}: never answered ({100 * args.target_precision:g}% not reached)")
            continue
        right = "-" if level["precision"] is None else f"{100 * level['precision']:.1f}%"
        print(f"  {level['level']}: answered at confidence >= {level['threshold']:.3f}; "
              f"{100 * level['answered']:.1f}% of photos answered here, {right} of them right")
    print(f"  unknown: {100 * record['unknown']['rate']:.1f}% of photos; overall {100 * record['coverage']:.1f}% "
          f"answered, {100 * record['accuracy']:.1f}% right")
    if record["n_images"] < 200:
        print(f"note: thresholds from {record['n_images']} images are rough; a larger {args.split} split "
              "gives steadier ones", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from skulens.analytics.records import read_recognitions, records_from_csv, records_from_dataset
    from skulens.analytics.report import build_report

    source = Path(args.dataset)
    catalog, log, notes = None, [], []
    is_log = source.suffix.lower() in (".jsonl", ".ndjson")
    logs = ([source] if is_log else []) + ([Path(args.predictions)] if args.predictions else [])
    if not is_log and source.suffix.lower() == ".csv":
        attributes = [c.strip() for c in args.attribute_columns.split(",") if c.strip()] \
            if args.attribute_columns else None
        tree = [c.strip() for c in args.tree_columns.split(",")] if args.tree_columns else None
        catalog = records_from_csv(source, label=args.label, tree_columns=tree, image_column=args.image_column,
                                   attributes=attributes, skip_columns=[args.split_column or "split"])
    elif not is_log:
        catalog = records_from_dataset(_load_dataset(args))
    for path in logs:
        records, problems = read_recognitions(path)
        log += records
        if problems:
            notes.append(f"{path}: {len(problems)} line(s) left out ({problems[0]}).")
            print(f"skulens: warning: {path}: {len(problems)} line(s) left out, e.g. {problems[0]}", file=sys.stderr)
    summary = build_report(args.out, products=catalog.records if catalog else None, recognitions=log,
                           level_names=catalog.level_names if catalog else None,
                           attribute_names=catalog.attribute_names if catalog else None, title=args.title,
                           source=", ".join(([catalog.source] if catalog else []) + [str(p) for p in logs]),
                           colour_sample=args.colour_sample, period=args.period, seed=args.seed,
                           progress=not args.no_progress and not args.json and sys.stderr.isatty(), notes=notes,
                           unit="images" if catalog and source.is_dir() else "products")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"report: {summary['index']} ({sum(f.endswith('.png') for f in summary['files'])} charts, "
              f"{sum(f.endswith('.csv') for f in summary['files'])} CSV tables)")
    return 0


COMMANDS.update(calibrate=cmd_calibrate, report=cmd_report)
def cmd_explain(args) -> int:
    from skulens.explain.command import run_explain

    return run_explain(args)


COMMANDS["explain"] = cmd_explain


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress messages only; libraries (faiss, onnxruntime) stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="skulens: %(message)s")
    logging.getLogger("skulens").setLevel(logging.INFO)
    handler = cmd_data_check if args.command == "data" else COMMANDS[args.command]
    try:
        return handler(args)
    except SkulensError as exc:
        print(f"skulens: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("skulens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only on request
        if args.debug or os.environ.get("SKULENS_DEBUG"):
            raise
        print(f"skulens: error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return EXIT_ERROR
