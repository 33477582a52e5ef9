"""`skulens explain RUN IMAGE --out heat.png [--feature-maps maps.png]`: the CLI side of explanations."""

from __future__ import annotations

import json
from pathlib import Path

from skulens.errors import SkulensError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _check_output(out: str, image: str) -> Path:
    path = Path(out)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise SkulensError(f"{out}: write a .png, .jpg or .webp file")
    if Path(image).exists() and path.exists() and path.resolve() == Path(image).resolve():
        raise SkulensError(f"{out}: that is the photo being explained; choose another file")
    return path


def _save(img, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.convert("RGB").save(path)
    except OSError as exc:
        raise SkulensError(f"{path}: cannot write the image ({exc.strerror or exc})") from None


def run_explain(args) -> int:
    from skulens.explain.feature_maps import feature_map_image
    from skulens.explain.gradcam import explain_image, load_explainable

    if not args.out and not args.feature_maps:
        raise SkulensError("nothing to write: pass --out HEAT.png (Grad-CAM) and/or --feature-maps MAPS.png")
    heat_path = _check_output(args.out, args.image) if args.out else None
    maps_path = _check_output(args.feature_maps, args.image) if args.feature_maps else None
    if args.layers < 1:
        raise SkulensError("--layers must be at least 1")
    loaded = load_explainable(args.run, args.device)  # once, for both pictures
    record: dict = {"image": args.image}
    explanation = explain_image(loaded, args.image, args.class_name)
    record.update(explanation.to_dict())
    if heat_path:
        _save(explanation.overlay(), heat_path)
        record["heatmap"] = str(heat_path)
    if maps_path:
        _save(feature_map_image(loaded, args.image, layers=args.layers), maps_path)
        record["feature_maps"] = str(maps_path)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{args.image}: {explanation.predicted_label} ({100 * explanation.predicted_probability:.1f}%)")
    if heat_path:
        print(f"  Grad-CAM for {explanation.label} ({100 * explanation.probability:.1f}%): {heat_path}")
    if maps_path:
        print(f"  feature maps of the first {args.layers} layer(s): {maps_path}")
    return 0
