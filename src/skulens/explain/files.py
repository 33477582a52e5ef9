"""Explanations written to image files: what `skulens explain` and ``Run.explain`` do.

explain_to_files("runs/grocery", "photo.jpg", out="heat.png", feature_maps="maps.png")
"""

from __future__ import annotations

from pathlib import Path

from skulens.errors import SkulensError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_output(out: str | Path, image) -> Path:
    """A picture file to write: an image suffix, and never the photo being explained."""
    path = Path(out)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise SkulensError(f"{out}: write a .png, .jpg or .webp file")
    if (
        isinstance(image, (str, Path))
        and Path(image).exists()
        and path.exists()
        and path.resolve() == Path(image).resolve()
    ):
        raise SkulensError(f"{out}: that is the photo being explained; choose another file")
    return path


def _save(img, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.convert("RGB").save(path)
    except OSError as exc:
        raise SkulensError(f"{path}: cannot write the image ({exc.strerror or exc})") from None


def explain_to_files(
    run,
    image,
    *,
    out: str | Path | None = None,
    feature_maps: str | Path | None = None,
    class_name: str | int | None = None,
    layers: int = 2,
    device: str = "cpu",
) -> dict:
    """Grad-CAM for ``image`` through ``run`` (a run folder, Recognizer or (model, config)); the heat
    map over the photo written to ``out`` and the first ``layers`` layers' feature maps to
    ``feature_maps`` when given. Returns the record: the image, the explained and the predicted class
    with their probabilities, and the files written."""
    from skulens.explain.feature_maps import feature_map_image
    from skulens.explain.gradcam import explain_image, load_explainable

    heat_path = check_output(out, image) if out else None
    maps_path = check_output(feature_maps, image) if feature_maps else None
    if layers < 1:
        raise SkulensError("--layers must be at least 1")
    loaded = load_explainable(run, device)  # once, for both pictures
    explanation = explain_image(loaded, image, class_name)
    record: dict = {"image": str(image) if isinstance(image, (str, Path)) else None, **explanation.to_dict()}
    if heat_path:
        _save(explanation.overlay(), heat_path)
        record["heatmap"] = str(heat_path)
    if maps_path:
        _save(feature_map_image(loaded, image, layers=layers), maps_path)
        record["feature_maps"] = str(maps_path)
    return record
