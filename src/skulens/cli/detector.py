"""`skulens detector train`, `evaluate` and `export`: the class-agnostic product detector (issue 18).
Parsing only; the work is in training.detector, training.detector_export and evaluation.detection."""

from __future__ import annotations

import argparse
import json

from skulens.cli.options import EXIT_OK, add_csv_columns, count_at_least, float_between, load_dataset


def add_parsers(sub) -> None:
    group = sub.add_parser("detector", help="find the products in a photo (class-agnostic detector)")
    commands = group.add_subparsers(dest="detector_command", required=True)
    train = commands.add_parser("train", help="train a detector on composed scenes of a dataset (no boxes needed)")
    train.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    train.add_argument("--out", required=True, help="detector folder to write")
    train.add_argument("--config", metavar="RECIPE", default=None, help="recipe file (.toml) of DetectorConfig fields")
    train.add_argument("--steps", type=count_at_least(1), default=None, help="training steps (default: the recipe's)")
    train.add_argument("--seed", type=int, default=None, help="seed of the composites and the head's init")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_csv_columns(train)
    train.set_defaults(handler=cmd_train)
    evaluate = commands.add_parser("evaluate", help="mAP@0.5, found rate and false boxes on composites of a split")
    evaluate.add_argument("detector", help="detector folder (detector.json + detector.safetensors)")
    evaluate.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    evaluate.add_argument("--n", type=count_at_least(1), default=200, help="composites to score (default: 200)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the composites (default: 0)")
    evaluate.add_argument(
        "--cutouts",
        type=float,
        default=0.0,
        help="share of pieces cut out of catalog images (default: 0, shopper photos only)",
    )
    evaluate.add_argument(
        "--pieces", choices=("photo", "cutout"), default="photo", help="paste the split's images whole or cut out"
    )
    evaluate.add_argument(
        "--singles",
        type=float_between(0.0, 1.0),
        default=0.0,
        help="share of scenes that are one photo filling the canvas (default: 0, 2-4 products each)",
    )
    evaluate.add_argument("--threshold", type=float, default=None, help="score threshold (default: the detector's)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_csv_columns(evaluate)
    evaluate.add_argument(
        "--engine", choices=("auto", "torch", "onnx"), default="auto", help="default: the checked ONNX export if any"
    )
    evaluate.set_defaults(handler=cmd_evaluate)
    _export_parser(commands)


def _export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="ONNX (FP32) and INT8 export of a detector, each checked on val composites"
    )
    export.add_argument("detector", help="detector folder (detector.json + detector.safetensors)")
    export.add_argument("dataset", help="the dataset it was trained from (calibration: train; check: val)")
    export.add_argument(
        "--calibration", type=count_at_least(8), default=64, help="calibration composites (default: 64)"
    )
    export.add_argument("--check", type=count_at_least(8), default=48, help="val composites checked (default: 48)")
    export.add_argument(
        "--max-found-drop",
        type=float,
        default=2.0,
        help="INT8 is used only if it finds at most this many points fewer products than PyTorch (default: 2)",
    )
    export.add_argument("--fp32-only", action="store_true", help="no INT8 model")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_csv_columns(export)
    export.set_defaults(handler=cmd_export)


def cmd_train(args) -> int:
    from skulens.training.detector import load_detector_config, train_detector

    progress = False if args.no_progress else None
    config = load_detector_config(args.config, steps=args.steps, seed=args.seed, progress=progress)
    dataset = load_dataset(argparse.Namespace(**{**vars(args), "seed": config.seed}))  # CSV columns as given
    record = train_detector(dataset, args.out, config)
    val = record["val"]
    print(
        f"trained {config.steps} steps in {record['train_seconds']:.0f} s; val ({val['images']} composites): "
        f"mAP@0.5 {val['map50']:.3f}, found {100 * val['found_rate']:.1f}%, "
        f"{val['false_per_image']:.2f} false boxes/image at score >= {record['score_threshold']}"
    )
    print(f"detector folder: {args.out}")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from dataclasses import replace

    from skulens.data.composition import CompositionConfig, make_eval_set
    from skulens.engines.detector import Detector
    from skulens.evaluation.detection import evaluate_detector

    detector = Detector.load(args.detector, engine=args.engine)
    recorded = CompositionConfig.from_dict(detector.record.get("composition", {}))
    config = replace(recorded, cutout_share=args.cutouts, split_pieces=args.pieces, single_share=args.singles)
    config.check()
    dataset = load_dataset(args)
    composites = make_eval_set(
        dataset, args.split, args.n, seed=args.seed, config=config, progress=not args.no_progress
    )
    figures = evaluate_detector(detector, composites, score_threshold=args.threshold, progress=not args.no_progress)
    print(json.dumps({"split": args.split, "engine": detector.engine, **figures}, indent=2))
    return EXIT_OK


def cmd_export(args) -> int:
    from skulens.training.detector_export import export_detector, training_seed

    seed = training_seed(args.detector)  # the train/val split the detector was trained on
    record = export_detector(
        args.detector,
        load_dataset(argparse.Namespace(**{**vars(args), "seed": seed})),
        calibration=args.calibration,
        check=args.check,
        max_found_drop=args.max_found_drop,
        int8=not args.fp32_only,
        progress=not args.no_progress,
    )
    torch_figures = record["check"]["torch"]
    for name in ("fp32", "int8"):
        if name in record:
            f = record[name]
            verdict = "" if name == "fp32" else ("  (used)" if f["passed"] else "  (REFUSED: FP32 is used)")
            print(
                f"{name}: found {100 * f['found_rate']:.1f}% (PyTorch {100 * torch_figures['found_rate']:.1f}%), "
                f"{f['false_per_image']:.2f} false/image at score >= {f['score_threshold']}, "
                f"mAP@0.5 {f['map50']:.3f}" + (f", input {f['input_size']} px" if "input_size" in f else "") + verdict
            )
    print(f"export record: {args.detector}/export.json")
    return EXIT_OK
