"""The `skulens` command line. Errors the user can fix print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from skulens import __version__
from skulens.errors import SkulensError

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CSV manifest columns (when DATASET is a .csv)")
    g.add_argument("--image-column", default="image", help="column with the image path (default: image)")
    g.add_argument("--label", default="label", help="column with the class label (default: label)")
    g.add_argument("--split-column", default="split", help="column with train/val/test (default: split; "
                   "absent: a seeded stratified split)")
    g.add_argument("--tree-columns", default=None,
                   help="comma-separated columns from the top of the category tree down, e.g. "
                        "master_category,sub_category (the label is the leaf)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits and training (default: 0)")


def _load_dataset(args):
    from skulens.data.datasets import CsvColumns, load_dataset

    cols = CsvColumns(image=args.image_column, label=args.label, split=args.split_column,
                      tree=[c.strip() for c in args.tree_columns.split(",")] if args.tree_columns else None)
    return load_dataset(args.dataset, csv_columns=cols, seed=args.seed)


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

    tr = sub.add_parser("train", help="train a classifier; writes a run folder")
    tr.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    tr.add_argument("--model", default="efficientnet_lite0",
                    help="efficientnet_lite0 (default, ImageNet weights), efficientnet_lite1/2, seedcnn, or a timm name")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--img-size", type=int, default=None, help="training input size (default: the model's native size)")
    tr.add_argument("--batch-size", type=int, default=None, help="default: 16 on a CPU, 32 on a GPU")
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
    tr.add_argument("--eval-sizes", default="", help="comma-separated test-time sizes to choose from on validation")
    tr.add_argument("--cache-scale", type=float, default=1.6,
                    help="keep decoded training photos at this multiple of --img-size (default 1.6)")
    tr.add_argument("--max-train-images", type=int, default=None, help="train on a class-balanced subset")
    tr.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tr.add_argument("--out", required=True, help="run folder to write")
    tr.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_dataset_args(tr)

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
    _add_dataset_args(ev)

    pr = sub.add_parser("predict", help="label, confidence and category path per image")
    pr.add_argument("run")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--tta", action="store_true")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"],
                    help="auto: ONNX Runtime on a CPU when the run has an up-to-date export, else PyTorch")
    pr.add_argument("--json", action="store_true", help="print a JSON list")

    ex = sub.add_parser("export", help="export a run to ONNX (and INT8), checked against PyTorch")
    ex.add_argument("run")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--int8", action="store_true", help="also write a static-quantized INT8 model")
    ex.add_argument("--calibration", metavar="DATASET", default=None,
                    help="dataset for calibration (train split) and checks (val split); default: the run's own")
    ex.add_argument("--calibration-images", type=int, default=300)
    ex.add_argument("--check-images", type=int, default=500)
    ex.add_argument("--max-top1-drop", type=float, default=1.0, help="INT8 tolerance in top-1 points (default 1.0)")
    ex.add_argument("--json", action="store_true")
    _add_dataset_args(ex)

    sub.add_parser("models", help="list the model names skulens can train")

    demo = sub.add_parser("demo", help="train, evaluate and predict on the small Grocery Store sample shipped with skulens")
    demo.add_argument("--out", default="runs/demo", help="run folder (replaced if it holds an earlier demo)")
    demo.add_argument("--epochs", type=int, default=12)
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
    from skulens.data.datasets import load_dataset
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
        aug = AugmentConfig(scale_min=1.0, hflip=0, color_jitter=0, affine_prob=0) if args.no_augment else AugmentConfig()
        cfg = TrainConfig(
            model=args.model, epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
            class_weighting=args.class_weighting, patience=args.patience, keep=args.keep, seed=args.seed,
            ema_decay=args.ema_decay,
            freeze_stages=args.freeze_stages, pretrained=not args.no_pretrained, weights=args.weights,
            in_chans=1 if args.grayscale else 3, catalog_images=args.catalog_images,
            eval_sizes=[int(s) for s in args.eval_sizes.split(",") if s.strip()], device=args.device,
            max_train_images=args.max_train_images, cache_scale=args.cache_scale, augment=aug, progress=not args.no_progress)
        result = train(cfg, _load_dataset(args), args.out)
    print(f"trained {result.epochs_run} epoch(s) in {result.train_seconds:.0f} s; best validation top-1 "
          f"{100 * result.best_val_acc:.2f}% at epoch {result.best_epoch}"
          + (f"; {result.skipped_images} unreadable image(s) skipped" if result.skipped_images else ""))
    print(f"run folder: {result.run_dir} (model.safetensors, config.json, log.csv, curves.png)")
    return 0


def cmd_evaluate(args) -> int:
    from skulens.evaluation.report import evaluate_run

    m = evaluate_run(args.run, _load_dataset(args), args.split, tta=args.tta, img_size=args.img_size,
                     device=args.device, engine=args.engine, out_dir=args.out,
                     progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "confusion_matrix"}, indent=2))
        return 0
    print(f"{args.split} ({m['engine']}): {m['n_images']} images, top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, "
          f"macro F1 {100 * m['macro_f1']:.2f}%")
    for level in m.get("levels", []):
        print(f"  {level['level']}: {100 * level['accuracy']:.2f}% ({level['n_nodes']} nodes)")
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
            print(f"{path}\t{pred.label}\t{100 * pred.confidence:.1f}%\t{' > '.join(pred.path)}", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return EXIT_PARTIAL if failed else 0


def cmd_export(args) -> int:
    from skulens.checkpoint import read_config
    from skulens.engines.onnx_export import export_onnx

    from skulens.data.datasets import CsvColumns, load_dataset

    dataset = None
    if args.calibration:
        args.dataset = args.calibration
        dataset = _load_dataset(args)
    else:
        train_args = read_config(args.run).train_args
        recorded = train_args.get("dataset")
        if recorded and Path(recorded).exists():
            columns = train_args.get("csv_columns")
            dataset = load_dataset(recorded, csv_columns=CsvColumns(**columns) if columns else None,
                                   seed=train_args.get("seed", 0))
    report = export_onnx(args.run, int8=args.int8, dataset=dataset, calibration_images=args.calibration_images,
                         check_images=args.check_images, max_top1_drop_int8=args.max_top1_drop)
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


COMMANDS = {"demo": cmd_demo, "export": cmd_export, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="skulens: %(message)s")
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
