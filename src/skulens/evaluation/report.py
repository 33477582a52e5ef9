"""`skulens evaluate`: metrics on a split, written as JSON, Markdown and a confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from skulens.data.datasets import ImageDataset
from skulens.engines import load_engine
from skulens.errors import DatasetError, SkulensError
from skulens.evaluation.calibration import backoff_evaluation, load_thresholds
from skulens.evaluation.inference import OutputCollector, dataset_probabilities, split_samples
from skulens.evaluation.metrics import classification_metrics
from skulens.evaluation.plots import plot_confusion_matrix
from skulens.models.attributes import align_attributes, attribute_metrics
from skulens.models.registry import check_input_size
from skulens.runs import RunFolder


def evaluate_run(
    run_dir: str | Path,
    dataset: ImageDataset,
    split: str = "test",
    *,
    tta: bool = False,
    img_size: int | None = None,
    device: str = "auto",
    engine: str = "auto",
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    progress: bool = True,
    choose_sizes: list[int] | None = None,
    choose_flip: bool = False,
) -> dict:
    """Score a run on one split; writes metrics.json, report.md and the plots to ``out_dir``
    (default RUN/eval-SPLIT). ``choose_sizes`` / ``choose_flip``: the input size (and whether to
    average with the mirror image) are first chosen on the val split, then ``split`` is scored once."""
    run_dir = Path(run_dir)
    runner = load_engine(run_dir, engine, device)
    config = runner.config
    samples = split_samples(dataset, split, config.classes)
    chosen = None
    if choose_sizes or choose_flip:
        chosen = choose_test_time(
            runner,
            dataset,
            split,
            choose_sizes or [img_size or config.preprocessing.img_size],
            [False, True] if choose_flip else [tta],
            batch_size=batch_size,
            progress=progress,
        )
        img_size, tta = chosen["img_size"], chosen["tta_hflip"]
    size = _input_size(runner, img_size)
    collector = OutputCollector(runner, tta)  # one pass gives the class and the attribute probabilities
    probs, labels, kept, failures = dataset_probabilities(
        collector, samples, config.preprocessing, img_size=size, batch_size=batch_size, progress=progress
    )
    if len(labels) == 0:
        raise DatasetError(f"none of the {len(samples)} images in split {split!r} could be read")
    metrics = classification_metrics(probs, labels, config.classes, config.tree)
    metrics.update(
        {
            "split": split,
            "dataset": str(dataset.root),
            "img_size": size,
            "tta_hflip": tta,
            "engine": runner.name,
            "unreadable": [{"path": str(p), "error": e} for p, e in failures],
        }
    )
    if chosen:
        metrics["chosen_on_val"] = chosen
    if config.model.attributes:
        metrics["attributes"] = _attribute_section(collector, [samples[i] for i in kept], dataset, config, run_dir)
    return _write_report(
        metrics, probs, labels, config, run_dir, Path(out_dir) if out_dir else run_dir / f"eval-{split}"
    )


def _input_size(runner, img_size: int | None) -> int:
    config = runner.config
    size = img_size or config.preprocessing.img_size
    check_input_size(config.model, size)
    if runner.name != "torch" and size != config.preprocessing.img_size:
        raise SkulensError(
            f"the ONNX export takes {config.preprocessing.img_size} px input; use --engine torch "
            f"to evaluate at {size} px"
        )
    return size


def choose_test_time(
    runner,
    dataset: ImageDataset,
    split: str,
    sizes: list[int],
    flips: list[bool],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """The input size and flip setting with the best top-1 on the val split (ties: no flip, then the
    size nearest the run's own): chosen there so that the split scored afterwards stays unseen."""
    if split == "val":
        raise SkulensError(
            "the test-time settings are chosen on the val split, so they cannot be scored on it; "
            "score another split (e.g. --split test)"
        )
    samples = split_samples(dataset, "val", runner.config.classes)
    own = runner.config.preprocessing.img_size
    candidates = []
    for size in sorted(set(sizes)):
        for flip in sorted(set(flips)):
            probs, labels, _, _ = dataset_probabilities(
                lambda x, f=flip: runner.probabilities(x, f),
                samples,
                runner.config.preprocessing,
                img_size=_input_size(runner, size),
                batch_size=batch_size,
                progress=progress,
                desc=f"val at {size}px{' + flip' if flip else ''}",
            )
            top1 = float(np.mean(probs.argmax(1) == labels)) if len(labels) else 0.0
            candidates.append({"img_size": size, "tta_hflip": flip, "val_top1": top1})
    best = max(candidates, key=lambda c: (c["val_top1"], not c["tta_hflip"], -abs(c["img_size"] - own)))
    return {
        "img_size": best["img_size"],
        "tta_hflip": best["tta_hflip"],
        "n_val_images": len(samples),
        "candidates": candidates,
    }


def _write_report(metrics: dict, probs: np.ndarray, labels: np.ndarray, config, run_dir: Path, out: Path) -> dict:
    split = metrics["split"]
    out.mkdir(parents=True, exist_ok=True)
    metrics["backoff"] = backoff_evaluation(
        probs,
        labels,
        config,
        load_thresholds(run_dir, config),
        out / "backoff_curve.png",
        f"Back-off on the {split} split",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(
        np.array(metrics["confusion_matrix"]),
        config.classes,
        out / "confusion_matrix.png",
        f"Confusion matrix, {split} split (top-1 {100 * metrics['top1']:.1f}%)",
    )
    (out / "report.md").write_text(markdown_report(metrics, run_dir))
    if out.resolve().parent == run_dir.resolve():  # an evaluation kept in the run folder: the model card shows it
        RunFolder(run_dir).write_card()
    metrics["out_dir"] = str(out)
    return metrics


def markdown_report(m: dict, run_dir: Path) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        f"# Evaluation of `{run_dir}` on the {m['split']} split",
        "",
        f"Dataset: `{m['dataset']}`; {m['n_images']} images; input {m['img_size']} px; engine {m['engine']}"
        f"{'; flip test-time augmentation' if m['tta_hflip'] else ''}.",
        *_chosen_markdown(m.get("chosen_on_val")),
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| top-1 accuracy | {pct(m['top1'])} |",
        f"| top-5 accuracy | {pct(m['top5'])} |",
        f"| macro precision | {pct(m['macro_precision'])} |",
        f"| macro recall | {pct(m['macro_recall'])} |",
        f"| macro F1 | {pct(m['macro_f1'])} |",
    ]
    if m.get("levels"):
        lines += [
            "",
            "## Accuracy per level of the category tree",
            "",
            "| level | nodes | accuracy (predicted path) | summing leaf probabilities |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {lv['level']} | {lv['n_nodes']} | {pct(lv['accuracy'])} | {pct(lv['accuracy_summed'])} |"
            for lv in m["levels"]
        ]
    if m["unreadable"]:
        lines += ["", f"{len(m['unreadable'])} image(s) could not be read and were left out."]
    lines += attributes_markdown(m.get("attributes"))
    lines += backoff_markdown(m.get("backoff"))
    lines += ["", "## Per class", "", "| class | images | precision | recall | F1 |", "| --- | --- | --- | --- | --- |"]
    for row in sorted(m["per_class"], key=lambda r: r["f1"]):
        if row["support"]:
            lines.append(
                f"| {row['class']} | {row['support']} | {pct(row['precision'])} | {pct(row['recall'])} | "
                f"{pct(row['f1'])} |"
            )
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def _chosen_markdown(chosen: dict | None) -> list[str]:
    if not chosen:
        return []
    tried = ", ".join(
        f"{c['img_size']} px{' + flip' if c['tta_hflip'] else ''} {100 * c['val_top1']:.2f}%"
        for c in chosen["candidates"]
    )
    return [
        "",
        f"Input size and flip chosen on the val split ({chosen['n_val_images']} images) before this split "
        f"was scored: {tried}.",
    ]


def _attribute_section(collector: OutputCollector, samples, dataset: ImageDataset, config, run_dir: Path) -> dict:
    kept_samples, specs = align_attributes(samples, dataset.attributes, config.model.attributes)
    if not specs:
        return {}  # the dataset was loaded without the attribute columns: nothing to score against
    probs = {n: p for n, p in collector.attribute_probs().items() if n in specs}
    return attribute_metrics(probs, kept_samples, specs, RunFolder(run_dir).attribute_thresholds())


def attributes_markdown(a: dict | None) -> list[str]:
    if not a:
        return []
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        "",
        "## Attributes",
        "",
        "Scored over the images whose value is known (empty cells left out).",
        "",
        "| attribute | kind | known / unknown | accuracy or mAP | precision / recall / F1 at the thresholds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in a.items():
        if m["kind"] == "softmax":
            family = f" (colour family: {pct(m['family_accuracy'])})" if "family_accuracy" in m else ""
            lines.append(
                f"| {name} | one value | {m['n_known']} / {m['n_unknown']} | {pct(m['accuracy'])}{family} | - |"
            )
        else:
            tuned = "" if m["thresholds_tuned"] else " (0.5, not tuned)"
            lines.append(
                f"| {name} | tags | {m['n_known']} / {m['n_unknown']} | mAP {pct(m['mAP'])} | "
                f"{pct(m['precision'])} / {pct(m['recall'])} / {pct(m['f1'])}{tuned} |"
            )
    return lines


def backoff_markdown(b: dict | None) -> list[str]:
    if not b:
        return []
    lines = ["", "## Back-off: answering only as deep as the model is sure", ""]
    cal = b.get("calibrated")
    if cal:
        acc = "-" if cal["accuracy"] is None else f"{100 * cal['accuracy']:.2f}%"
        shares = ", ".join(f"{name} {100 * s:.1f}%" for name, s in zip(b["level_names"], cal["level_shares"]))
        lines += [
            f"With the thresholds of `skulens calibrate`: {100 * cal['coverage']:.1f}% of photos answered "
            f"({shares}), {acc} of the answers right, {100 * cal['unknown_rate']:.1f}% answered unknown.",
            "",
        ]
    else:
        lines += [
            "The run is not calibrated (`skulens calibrate RUN`); the table shows what each threshold would give.",
            "",
        ]
    lines += ["| threshold | answered | right | down to the finest level |", "| --- | --- | --- | --- |"]
    for p in b["curve"][::10]:
        acc = "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.1f}%"
        lines.append(
            f"| {p['threshold']:.1f} | {100 * p['coverage']:.1f}% | {acc} | {100 * p['finest_level_share']:.1f}% |"
        )
    lines += ["", f"![back-off curve]({b['plot']})"]
    return lines
