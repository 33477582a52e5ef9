"""`skulens evaluate`: metrics on a split, written as JSON, Markdown and a confusion-matrix PNG."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from skulens.data.datasets import ImageDataset
from skulens.errors import DatasetError, SkulensError
from skulens.evaluation.inference import dataset_probabilities
from skulens.evaluation.metrics import classification_metrics
from skulens.models.attributes import (
    OutputCollector, align_attributes, attribute_metrics, engine_outputs, load_attribute_thresholds,
    load_engine_with_attributes,
)
from skulens.models.registry import check_input_size
from skulens.recognition.calibration import backoff_evaluation, load_thresholds
from skulens.training.plots import plot_confusion_matrix


def evaluate_run(run_dir: str | Path, dataset: ImageDataset, split: str = "test", *, tta: bool = False,
                 img_size: int | None = None, device: str = "auto", engine: str = "auto", batch_size: int = 16,
                 out_dir: str | Path | None = None, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    runner = load_engine_with_attributes(run_dir, engine, device)
    config = runner.config
    if list(dataset.classes) != list(config.classes):
        unknown = sorted(set(dataset.classes) - set(config.classes))
        if unknown:
            raise SkulensError(f"the dataset has classes the model does not know: {', '.join(unknown[:5])}")
        remap = {i: config.classes.index(c) for i, c in enumerate(dataset.classes)}
        samples = [replace(s, label=remap[s.label]) for s in dataset.split(split)]
    else:
        samples = dataset.split(split)
    if not samples:
        have = ", ".join(sorted({s.split for s in dataset.samples}))
        raise DatasetError(f"{dataset.root}: no images in split {split!r} (it has: {have})")
    size = img_size or config.preprocessing.img_size
    check_input_size(config.model, size)
    if runner.name != "torch" and size != config.preprocessing.img_size:
        raise SkulensError(f"the ONNX export takes {config.preprocessing.img_size} px input; use --engine torch "
                           f"to evaluate at {size} px")
    predict = lambda x: runner.probabilities(x, tta)  # noqa: E731
    if config.model.attributes:
        predict = OutputCollector(lambda x: engine_outputs(runner, x, tta))  # one pass gives both outputs
    probs, labels, kept, failures = dataset_probabilities(predict, samples, config.preprocessing, img_size=size,
                                                          batch_size=batch_size, progress=progress)
    if len(labels) == 0:
        raise DatasetError(f"none of the {len(samples)} images in split {split!r} could be read")
    metrics = classification_metrics(probs, labels, config.classes, config.tree)
    metrics.update({"split": split, "dataset": str(dataset.root), "img_size": size, "tta_hflip": tta,
                    "engine": runner.name,
                    "unreadable": [{"path": str(p), "error": e} for p, e in failures]})
    if config.model.attributes:
        metrics["attributes"] = _attribute_section(predict, [samples[i] for i in kept], dataset, config, run_dir)
    out = Path(out_dir) if out_dir else run_dir / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    metrics["backoff"] = backoff_evaluation(probs, labels, config, load_thresholds(run_dir, config),
                                            out / "backoff_curve.png", f"Back-off on the {split} split")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), config.classes, out / "confusion_matrix.png",
                          f"Confusion matrix, {split} split (top-1 {100 * metrics['top1']:.1f}%)")
    (out / "report.md").write_text(markdown_report(metrics, run_dir))
    metrics["out_dir"] = str(out)
    return metrics


def markdown_report(m: dict, run_dir: Path) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = [f"# Evaluation of `{run_dir}` on the {m['split']} split", "",
             f"Dataset: `{m['dataset']}`; {m['n_images']} images; input {m['img_size']} px; engine {m['engine']}"
             f"{'; flip test-time augmentation' if m['tta_hflip'] else ''}.", "",
             "| metric | value |", "| --- | --- |",
             f"| top-1 accuracy | {pct(m['top1'])} |", f"| top-5 accuracy | {pct(m['top5'])} |",
             f"| macro precision | {pct(m['macro_precision'])} |", f"| macro recall | {pct(m['macro_recall'])} |",
             f"| macro F1 | {pct(m['macro_f1'])} |"]
    if m.get("levels"):
        lines += ["", "## Accuracy per level of the category tree", "",
                  "| level | nodes | accuracy (predicted path) | summing leaf probabilities |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {lv['level']} | {lv['n_nodes']} | {pct(lv['accuracy'])} | {pct(lv['accuracy_summed'])} |"
                  for lv in m["levels"]]
    if m["unreadable"]:
        lines += ["", f"{len(m['unreadable'])} image(s) could not be read and were left out."]
    lines += attributes_markdown(m.get("attributes"))
    lines += backoff_markdown(m.get("backoff"))
    lines += ["", "## Per class", "", "| class | images | precision | recall | F1 |", "| --- | --- | --- | --- | --- |"]
    for row in sorted(m["per_class"], key=lambda r: r["f1"]):
        if row["support"]:
            lines.append(f"| {row['class']} | {row['support']} | {pct(row['precision'])} | {pct(row['recall'])} | "
                         f"{pct(row['f1'])} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def _attribute_section(collector: OutputCollector, samples, dataset: ImageDataset, config, run_dir: Path) -> dict:
    kept_samples, specs = align_attributes(samples, dataset.attributes, config.model.attributes)
    if not specs:
        return {}  # the dataset was loaded without the attribute columns: nothing to score against
    probs = {n: p for n, p in collector.attribute_probs().items() if n in specs}
    return attribute_metrics(probs, kept_samples, specs, load_attribute_thresholds(run_dir))


def attributes_markdown(a: dict | None) -> list[str]:
    if not a:
        return []
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = ["", "## Attributes", "", "Scored over the images whose value is known (empty cells left out).", "",
             "| attribute | kind | known / unknown | accuracy or mAP | precision / recall / F1 at the thresholds |",
             "| --- | --- | --- | --- | --- |"]
    for name, m in a.items():
        if m["kind"] == "softmax":
            lines.append(f"| {name} | one value | {m['n_known']} / {m['n_unknown']} | {pct(m['accuracy'])} | - |")
        else:
            tuned = "" if m["thresholds_tuned"] else " (0.5, not tuned)"
            lines.append(f"| {name} | tags | {m['n_known']} / {m['n_unknown']} | mAP {pct(m['mAP'])} | "
                         f"{pct(m['precision'])} / {pct(m['recall'])} / {pct(m['f1'])}{tuned} |")
    return lines


def backoff_markdown(b: dict | None) -> list[str]:
    if not b:
        return []
    lines = ["", "## Back-off: answering only as deep as the model is sure", ""]
    cal = b.get("calibrated")
    if cal:
        acc = "-" if cal["accuracy"] is None else f"{100 * cal['accuracy']:.2f}%"
        shares = ", ".join(f"{name} {100 * s:.1f}%" for name, s in zip(b["level_names"], cal["level_shares"]))
        lines += [f"With the thresholds of `skulens calibrate`: {100 * cal['coverage']:.1f}% of photos answered "
                  f"({shares}), {acc} of the answers right, {100 * cal['unknown_rate']:.1f}% answered unknown.", ""]
    else:
        lines += ["The run is not calibrated (`skulens calibrate RUN`); the table shows what each threshold "
                  "would give.", ""]
    lines += ["| threshold | answered | right | down to the finest level |", "| --- | --- | --- | --- |"]
    for p in b["curve"][::10]:
        acc = "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.1f}%"
        lines.append(f"| {p['threshold']:.1f} | {100 * p['coverage']:.1f}% | {acc} | "
                     f"{100 * p['finest_level_share']:.1f}% |")
    lines += ["", f"![back-off curve]({b['plot']})"]
    return lines
