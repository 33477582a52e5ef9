"""The model card (``README.md`` in each run folder): what the weights are, what they were trained
on and with, what they score on which split, and what they cannot do. Written after training and
refreshed after each evaluation kept in the folder, from the folder's own files only."""

from __future__ import annotations

import json

from skulens.runs.names import RECIPE_FILE, THRESHOLDS_FILE


def model_card(folder) -> str:
    config = folder.config()
    sections = [
        f"# Model card: {folder.path.name}\n\nA skulens run folder: `skulens predict {folder.path} photo.jpg`, "
        f"or `Run({str(folder.path)!r})` in Python.",
        _model_section(config, folder.weights_sha256()),
        _data_section(config),
        _recipe_section(folder.path, (folder / RECIPE_FILE).is_file(), config.train_args),
        _metrics_section(folder, config),
        _limits_section(config, (folder / THRESHOLDS_FILE).is_file(), folder.path),
    ]
    return "\n\n".join(sections) + "\n"


def _model_section(config, digest: str | None) -> str:
    spec, pre = config.model, config.preprocessing
    heads = []
    if spec.embedding_dim:
        heads.append(f"a {spec.embedding_dim}-d ArcFace embedding head (for visual search)")
    if spec.attributes:
        heads.append(
            "attribute heads: "
            + ", ".join(f"{n} ({a['kind']}, {len(a['values'])} values)" for n, a in spec.attributes.items())
        )
    lines = [
        "## Model",
        "",
        f"- Architecture: `{spec.name}`, {spec.num_classes} classes" + (f"; {'; '.join(heads)}" if heads else ""),
        f"- Input: {pre.img_size} px ({'centre crop' if pre.resize == 'crop' else 'padded to square'}), "
        f"{pre.in_chans} channel(s), normalised with mean {pre.mean} and std {pre.std}",
        f"- Weights: `model.safetensors`, sha256 `{digest or 'missing'}`",
    ]
    if "architecture" in config.to_dict():
        lines.append('- Also a timm model folder: `timm.create_model("local-dir:PATH", pretrained=True)`')
    return "\n".join(lines)


def _data_section(config) -> str:
    args = config.train_args
    classes = list(config.classes)
    shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    lines = ["## Data", "", f"- Dataset: `{args.get('dataset', 'not recorded')}`", f"- Classes: {shown}"]
    if config.tree is not None:
        lines.append(f"- Category tree: {len(config.tree.level_names)} levels ({', '.join(config.tree.level_names)})")
    if args.get("seed") is not None:
        lines.append(f"- Split and shuffling seed: {args['seed']}")
    return "\n".join(lines)


def _recipe_section(path, has_recipe: bool, args: dict) -> str:
    if has_recipe:
        body = (
            f"Every training setting is in `recipe.toml`; `skulens train DATA --config {path}/recipe.toml` "
            "trains the same way again."
        )
    else:
        body = "No `recipe.toml` (a run from an older skulens); its settings are in `config.json`'s `train_args`."
    keys = ("epochs", "lr", "batch_size", "img_size", "optimizer", "freeze_stages", "label_smoothing", "keep")
    shown = ", ".join(f"{k} {args[k]}" for k in keys if k in args)
    return "## Recipe\n\n" + body + (f"\n\nKey settings: {shown}." if shown else "")


def _metrics_section(folder, config) -> str:
    rows = ["| split | images | top-1 | top-5 |", "|---|---|---|---|"]
    val = config.metrics.get("val_top1")
    if val is not None:
        epoch = config.metrics.get("epoch")
        rows.append(f"| val (chose the weights{f', epoch {epoch}' if epoch else ''}) | - | {100 * val:.2f}% | - |")
    evaluated = []
    for metrics_file in sorted(folder.path.glob("eval-*/metrics.json")):
        try:
            m = json.loads(metrics_file.read_text(encoding="utf-8"))
            rows.append(
                f"| {m['split']} | {m['n_images']} | {100 * m['top1']:.2f}% | {100 * m['top5']:.2f}% |"
                if m.get("top5") is not None
                else f"| {m['split']} | {m['n_images']} | {100 * m['top1']:.2f}% | - |"
            )
            evaluated.append(m["split"])
        except (ValueError, KeyError, TypeError, OSError):
            continue  # a half-written or foreign file is not a figure
    note = ""
    if "test" not in evaluated:
        note = (
            f"\n\nTest split: not evaluated yet (`skulens evaluate {folder.path} DATA --split test`). The val "
            "figure chose the weights, so it flatters them; only a split the run never saw measures them."
        )
    return "## Metrics\n\n" + "\n".join(rows) + note


def _limits_section(config, calibrated: bool, path) -> str:
    lines = [
        "## Limits",
        "",
        f"- It knows only its {len(config.classes)} classes: a photo of anything else still gets one of them.",
        "- The figures hold for photos like the dataset's (lighting, backgrounds, cameras); measure on your own "
        "photos before relying on them.",
    ]
    if calibrated:
        lines.append('- Calibrated (`thresholds.json`): an unsure answer backs off to a coarser category or "unknown".')
    else:
        lines.append(
            f"- Not calibrated: every answer is a leaf, however unsure; `skulens calibrate {path} DATA` "
            "lets it back off to a coarser category instead."
        )
    return "\n".join(lines)
