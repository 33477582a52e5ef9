"""Commands on a trained run: `evaluate`, `predict`, `explain`, `export`, `calibrate` (each calls Run)."""

from __future__ import annotations

import sys
from pathlib import Path

from skulens.cli.options import (
    EXIT_OK,
    EXIT_PARTIAL,
    add_csv_columns,
    add_device,
    add_engine,
    add_json,
    add_no_progress,
    add_seed,
    add_threads,
    comma_ints,
    error,
    print_json,
    run_dataset,
)
from skulens.errors import SkulensError

RUN_HELP = "run folder written by `skulens train`"


def add_parsers(sub) -> None:
    for add in (_evaluate_parser, _predict_parser, _explain_parser, _export_parser, _calibrate_parser):
        add(sub)


def _run_dataset_options(p) -> None:
    add_csv_columns(p, heads=True, defaults="run")
    add_seed(p, default=None)


def _evaluate_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="top-1/top-5, precision/recall/F1, confusion matrix, tree levels")
    ev.add_argument("run", help=RUN_HELP)
    ev.add_argument("dataset", nargs="?", default=None, help="default: the dataset the run was trained on")
    ev.add_argument("--split", default="test", help="the split to score (default: test)")
    ev.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    ev.add_argument("--img-size", type=int, default=None, help="input size (default: the run's)")
    ev.add_argument(
        "--choose-sizes",
        type=comma_ints,
        default=None,
        metavar="A,B",
        help="choose the input size among these on the val split, then score --split once",
    )
    ev.add_argument(
        "--choose-flip",
        action="store_true",
        help="choose on the val split whether flip TTA helps, then score --split once",
    )
    add_device(ev)
    add_engine(ev)
    ev.add_argument("--out", default=None, help="report folder (default: RUN/eval-SPLIT)")
    add_json(ev, "print the metrics as JSON")
    add_no_progress(ev)
    _run_dataset_options(ev)
    ev.set_defaults(handler=cmd_evaluate)


def _predict_parser(sub) -> None:
    pr = sub.add_parser("predict", help="label, confidence and category path per image")
    pr.add_argument("run", help=RUN_HELP)
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=5, help="classes per answer (default: 5)")
    pr.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    add_device(pr)
    add_engine(pr)
    add_threads(pr)
    add_json(pr, "print a JSON list")
    pr.add_argument("--objects", action="store_true", help="find each product of the photo, then recognise each")
    pr.add_argument("--detector", default=None, metavar="DIR", help="the product detector (skulens detector train)")
    pr.add_argument("--single-object", action="store_true", help="with --objects: only the largest, most central one")
    pr.add_argument("--detector-threshold", type=float, default=None, help="detector score (default: its own)")
    pr.set_defaults(handler=cmd_predict)


def _explain_parser(sub) -> None:
    xp = sub.add_parser("explain", help="why the model said what it said: Grad-CAM heat map, feature maps")
    xp.add_argument("run", help=RUN_HELP)
    xp.add_argument("image", help="the photo to explain")
    xp.add_argument("--out", default=None, help="write the Grad-CAM heat map over the photo here (.png/.jpg)")
    xp.add_argument("--feature-maps", default=None, metavar="FILE", help="write the first layers' feature maps here")
    xp.add_argument(
        "--class",
        dest="class_name",
        default=None,
        metavar="CLASS",
        help="explain this class (label or index) instead of the top prediction",
    )
    xp.add_argument("--layers", type=int, default=2, help="how many first layers --feature-maps shows (default: 2)")
    add_device(xp, default="cpu")
    add_json(xp, "print the answer as JSON")
    xp.add_argument("--objects", action="store_true", help="find each product of the photo, then explain each")
    xp.add_argument("--detector", default=None, metavar="DIR", help="the product detector (skulens detector train)")
    xp.add_argument("--single-object", action="store_true", help="with --objects: only the largest, most central one")
    xp.add_argument("--detector-threshold", type=float, default=None, help="detector score (default: its own)")
    xp.set_defaults(handler=cmd_explain)


def _export_parser(sub) -> None:
    ex = sub.add_parser("export", help="export a run to ONNX (and INT8), checked against PyTorch")
    ex.add_argument("run", help=RUN_HELP)
    ex.add_argument("--format", default="onnx", choices=["onnx"], help="(default: onnx)")
    ex.add_argument("--int8", action="store_true", help="also write a static-quantized INT8 model")
    ex.add_argument(
        "--int8-only", action="store_true", help="keep only the INT8 model (implies --int8; what a CPU server needs)"
    )
    ex.add_argument(
        "--int8-weights-only",
        action="store_true",
        help="INT8 weights, FP32 arithmetic (implies --int8): the same answers on every CPU and in the browser's "
        "on-device mode, at about twice static INT8's CPU time",
    )
    ex.add_argument(
        "--calibration",
        metavar="DATASET",
        default=None,
        help="dataset for calibration (train split) and checks (val split); default: the run's own",
    )
    ex.add_argument("--calibration-images", type=int, default=300, help="(default: 300)")
    ex.add_argument("--check-images", type=int, default=500, help="(default: 500)")
    ex.add_argument(
        "--calibration-method",
        default="minmax",
        choices=["minmax", "percentile", "entropy"],
        help="how INT8 activation ranges are set (percentile clips rare outliers; default: minmax)",
    )
    ex.add_argument("--max-top1-drop", type=float, default=1.0, help="INT8 tolerance in top-1 points (default: 1.0)")
    add_json(ex)
    _run_dataset_options(ex)
    ex.set_defaults(handler=cmd_export)


def _calibrate_parser(sub) -> None:
    ca = sub.add_parser("calibrate", help="pick back-off and 'unknown' thresholds on the validation split")
    ca.add_argument("run", help=RUN_HELP)
    ca.add_argument("dataset", nargs="?", default=None, help="default: the dataset the run was trained on")
    ca.add_argument("--split", default="val", help="held-out split to calibrate on (default: val)")
    ca.add_argument(
        "--target-precision",
        type=float,
        default=0.95,
        help="share of the answers at each tree level that must be right (default: 0.95)",
    )
    ca.add_argument(
        "--unknown-reject-rate",
        type=float,
        default=None,
        help="set the 'unknown' threshold so this share of validation photos gets it (e.g. 0.02) "
        "instead of from the target precision",
    )
    ca.add_argument("--tta", action="store_true", help="calibrate with flip test-time augmentation")
    add_device(ca)
    add_engine(ca)
    add_json(ca, "print the thresholds record as JSON")
    add_no_progress(ca)
    _run_dataset_options(ca)
    ca.set_defaults(handler=cmd_calibrate)


def cmd_evaluate(args) -> int:
    from skulens.api import Run

    run = Run(args.run)
    m = run.evaluate(
        run_dataset(run, args, args.dataset),
        args.split,
        tta=args.tta,
        img_size=args.img_size,
        engine=args.engine,
        device=args.device,
        out=args.out,
        progress=not args.no_progress and not args.json,
        choose_sizes=args.choose_sizes,
        choose_flip=args.choose_flip,
    )
    if args.json:
        print_json({k: v for k, v in m.items() if k != "confusion_matrix"})
    else:
        _print_metrics(m, args.split)
    return EXIT_OK


def _print_metrics(m: dict, split: str) -> None:
    print(
        f"{split} ({m['engine']}): {m['n_images']} images, top-1 {100 * m['top1']:.2f}%, "
        f"top-5 {100 * m['top5']:.2f}%, macro F1 {100 * m['macro_f1']:.2f}%"
    )
    if m.get("chosen_on_val"):
        chosen = m["chosen_on_val"]
        print(
            f"  chosen on the val split ({chosen['n_val_images']} images): {chosen['img_size']} px, "
            f"{'flip TTA' if chosen['tta_hflip'] else 'no flip TTA'}"
        )
    for level in m.get("levels", []):
        print(f"  {level['level']}: {100 * level['accuracy']:.2f}% ({level['n_nodes']} nodes)")
    for name, a in m.get("attributes", {}).items():
        what = f"accuracy {100 * a['accuracy']:.2f}%" if a["kind"] == "softmax" else f"mAP {100 * a['mAP']:.2f}%"
        print(f"  attribute {name}: {what} ({a['n_known']} images with a known value)")
    if m["unreadable"]:
        print(f"  {len(m['unreadable'])} unreadable image(s) left out", file=sys.stderr)
    print(f"report: {m['out_dir']}/report.md, metrics.json, confusion_matrix.png")


def cmd_predict(args) -> int:
    from skulens.api import Run

    if args.objects or args.detector:
        return _predict_objects(Run(args.run), args)
    answered, failed, records = 0, False, []
    run = Run(args.run)
    options = {"engine": args.engine, "device": args.device, "tta": args.tta, "threads": args.threads}
    for path, pred, problem in run.predict_files(args.images, top_k=args.top_k, workers=args.workers, **options):
        if problem:
            failed = True
            error(problem)
            records.append({"source": str(path), "error": problem})
        elif args.json:
            records.append(pred.to_dict())
        else:
            attrs = "".join(f"\t{name}={_attribute_text(a)}" for name, a in pred.attributes.items())
            print(f"{path}\t{pred.label}\t{100 * pred.confidence:.1f}%\t{' > '.join(pred.path)}{attrs}", flush=True)
        answered += problem is None
    if args.json:
        print_json(records)
    return EXIT_PARTIAL if failed or not answered else EXIT_OK


def _predict_objects(run, args) -> int:
    """One line per product found (image, object number, box, detector score, label, confidence, path);
    a bad file costs one error line, the rest still run."""
    from skulens.api import expand_paths

    if not args.detector:
        raise SkulensError("--objects needs --detector DIR (a folder made by skulens detector train)")
    files, problems = expand_paths(args.images)
    failed, records = bool(problems), []
    for _, message in problems:
        error(message)
    options = {"single": args.single_object, "score_threshold": args.detector_threshold, "engine": args.engine}
    for path in files:
        try:
            objects = run.predict_objects(path, args.detector, top_k=args.top_k, device=args.device, **options)
        except SkulensError as exc:
            failed = True
            error(str(exc))
            continue
        for i, obj in enumerate(objects, 1):
            p = obj.prediction
            score = "whole photo" if obj.score is None else f"{100 * obj.score:.0f}%"
            box = ",".join(f"{v:.0f}" for v in obj.box)
            records.append({"source": str(path), "object": i, **obj.to_dict()})
            if not args.json:
                print(f"{path}\t#{i}\t{box}\t{score}\t{p.label}\t{100 * p.confidence:.1f}%\t{' > '.join(p.path)}")
    if args.json:
        print_json(records)
    return EXIT_PARTIAL if failed or not records else EXIT_OK


def _attribute_text(a: dict) -> str:
    if a.get("confidence") is None:  # tags: "summer|sale" (each one's probability is in --json)
        return a["value"]
    return f"{a['value']} ({100 * a['confidence']:.0f}%)"


def cmd_explain(args) -> int:
    from skulens.api import Run

    if not args.out and not args.feature_maps:
        raise SkulensError("nothing to write: pass --out HEAT.png (Grad-CAM) and/or --feature-maps MAPS.png")
    objects = _explain_object_options(args)
    record = Run(args.run).explain(
        args.image,
        out=args.out,
        feature_maps=args.feature_maps,
        class_name=args.class_name,
        layers=args.layers,
        device=args.device,
        **objects,
    )
    if args.json:
        print_json(record)
    elif objects:
        _print_explained_objects(args.image, record, args.layers)
    else:
        print(f"{args.image}: {record['predicted_label']} ({100 * record['predicted_probability']:.1f}%)")
        _print_explained_files(record, args.layers, "  ")
    return EXIT_OK


def _explain_object_options(args) -> dict:
    """--objects and its options as Run.explain's keywords ({} without --objects); the same rules as
    `skulens predict --objects`, and the detector options refused without it."""
    if not (args.objects or args.detector):
        if args.single_object or args.detector_threshold is not None:
            raise SkulensError("--single-object and --detector-threshold need --objects")
        return {}
    if not args.detector:
        raise SkulensError("--objects needs --detector DIR (a folder made by skulens detector train)")
    return {
        "objects": True,
        "detector": args.detector,
        "single": args.single_object,
        "score_threshold": args.detector_threshold,
    }


def _print_explained_objects(image, record: dict, layers: int) -> None:
    """One line per product (number, box, detector score, predicted label), its files under it."""
    objects = record["objects"]
    print(f"{image}: {len(objects)} product(s)")
    for obj in objects:
        score = "whole photo" if obj["score"] is None else f"{100 * obj['score']:.0f}%"
        box = ",".join(f"{v:.0f}" for v in obj["box"])
        label = f"{obj['predicted_label']} ({100 * obj['predicted_probability']:.1f}%)"
        print(f"  #{obj['object']}\t{box}\t{score}\t{label}")
        _print_explained_files(obj, layers, "    ")


def _print_explained_files(record: dict, layers: int, indent: str) -> None:
    if "heatmap" in record:
        print(f"{indent}Grad-CAM for {record['label']} ({100 * record['probability']:.1f}%): {record['heatmap']}")
    if "feature_maps" in record:
        print(f"{indent}feature maps of the first {layers} layer(s): {record['feature_maps']}")


def cmd_export(args) -> int:
    from skulens.api import Run

    run = Run(args.run)
    dataset = run_dataset(run, args, args.calibration, required=False)
    report = run.export(
        args.int8 or args.int8_only or args.int8_weights_only,
        dataset,
        calibration_images=args.calibration_images,
        check_images=args.check_images,
        max_top1_drop=args.max_top1_drop,
        calibration_method=args.calibration_method,
        int8_only=args.int8_only,
        int8_weights_only=args.int8_weights_only,
    )
    if args.json:
        print_json(report.to_dict())
        return EXIT_OK
    for check in report.checks:
        accuracy = ""
        if check.torch_top1 is not None:
            accuracy = (
                f", top-1 {100 * check.onnx_top1:.2f}% vs PyTorch {100 * check.torch_top1:.2f}% "
                f"({check.top1_change_points:+.2f} points)"
            )
        print(
            f"{Path(args.run) / check.file}: {check.size_bytes / 1e6:.1f} MB, top-1 agreement with PyTorch "
            f"{100 * check.top1_agreement:.1f}% on {check.n_images} images{accuracy}"
        )
    if dataset is None:
        print("checked on random inputs only: pass --calibration DATASET to check on real images")
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from skulens.api import Run

    run = Run(args.run)
    record = run.calibrate(
        run_dataset(run, args, args.dataset),
        args.split,
        target_precision=args.target_precision,
        unknown_reject_rate=args.unknown_reject_rate,
        tta=args.tta,
        engine=args.engine,
        device=args.device,
        progress=not args.no_progress and not args.json,
    )
    if args.json:
        print_json(record)
    else:
        _print_calibration(record, args.split, args.target_precision)
    return EXIT_OK


def _print_calibration(record: dict, split: str, target: float) -> None:
    print(
        f"calibrated on {record['n_images']} {split} images for {100 * target:g}% precision per level: {record['path']}"
    )
    for level in record["levels"]:
        if level["threshold"] is None:
            print(f"  {level['level']}: never answered ({100 * target:g}% not reached)")
            continue
        right = "-" if level["precision"] is None else f"{100 * level['precision']:.1f}%"
        print(
            f"  {level['level']}: answered at confidence >= {level['threshold']:.3f}; "
            f"{100 * level['answered']:.1f}% of photos answered here, {right} of them right"
        )
    print(
        f"  unknown: {100 * record['unknown']['rate']:.1f}% of photos; overall {100 * record['coverage']:.1f}% "
        f"answered, {100 * record['accuracy']:.1f}% right"
    )
    if record["n_images"] < 200:
        print(
            f"note: thresholds from {record['n_images']} images are rough; a larger {split} split gives steadier ones",
            file=sys.stderr,
        )
