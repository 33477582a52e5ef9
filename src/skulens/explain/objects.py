"""Photos of several products (issue 18): find each product, then explain each one's crop.

    explain_objects_to_files(recognizer, "shelf.jpg", out="heat.png")   # heat_obj1.png, heat_obj2.png, ...
    picture, objects = objects_overlay(recognizer, photo)              # one picture: each box's heat map

The products are found as ``Recognizer.predict_objects`` finds them (the same boxes, the same
whole-photo fallback when nothing is found), so an explanation is of exactly the crop that was
recognised. ``recognizer`` is a Recognizer loaded with a detector; Grad-CAM runs its PyTorch weights.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from skulens.errors import SkulensError
from skulens.explain.files import check_output, explain_to_files
from skulens.explain.gradcam import DISPLAY_SIDE, explain_image, load_explainable, overlay_heatmap

BOX_COLOUR = (255, 255, 255)


def object_file(path: str | Path, number: int) -> Path:
    """``heat.png`` -> ``heat_obj2.png``: object ``number``'s file beside the name given."""
    path = Path(path)
    return path.with_name(f"{path.stem}_obj{number}{path.suffix}")


def find_objects(recognizer, photo: Image.Image, *, single: bool = False, score_threshold: float | None = None):
    """The products of ``photo`` (ObjectPrediction, best first; nothing found: the whole photo) and
    each one's crop, cut as the recogniser cut it."""
    if getattr(recognizer, "detector", None) is None:
        raise SkulensError("explaining each product needs a product detector (a folder made by skulens detector train)")
    found = recognizer.predict_objects(photo, 1, single=single, score_threshold=score_threshold)
    return [(obj, photo.crop(tuple(round(v) for v in obj.box))) for obj in found]


def _object_record(number: int, obj) -> dict:
    return {"object": number, "box": obj.box, "score": obj.score}


def explain_objects_to_files(
    recognizer,
    image,
    *,
    out: str | Path | None = None,
    feature_maps: str | Path | None = None,
    class_name: str | int | None = None,
    layers: int = 2,
    device: str = "cpu",
    single: bool = False,
    score_threshold: float | None = None,
) -> dict:
    """:func:`~skulens.explain.files.explain_to_files` for each product of ``image``: object N's heat
    map goes to ``out`` with ``_objN`` before its suffix (feature maps likewise). Returns
    ``{"image", "objects": [{"object", "box", "score", ...the explanation record}]}``."""
    from skulens.data.images import load_image

    # Every name is checked before the detector runs: a bad one fails at once, not after the work.
    for given in (out, feature_maps):
        if given:
            check_output(given, image)
    if layers < 1:
        raise SkulensError("--layers must be at least 1")
    photo = load_image(image)  # at full size: the boxes are in the photo's own pixels
    found = find_objects(recognizer, photo, single=single, score_threshold=score_threshold)
    loaded = load_explainable(recognizer, device)  # once, for every product
    records = []
    for number, (obj, crop) in enumerate(found, 1):
        paths = {
            key: check_output(object_file(given, number), image)
            for key, given in (("out", out), ("feature_maps", feature_maps))
            if given
        }
        record = explain_to_files(loaded, crop, class_name=class_name, layers=layers, **paths)
        record.pop("image", None)  # a crop has no file of its own: the photo is named once, above
        records.append({**_object_record(number, obj), **record})
    return {"image": str(image) if isinstance(image, (str, Path)) else None, "objects": records}


def _crop_overlay(explanation, crop: Image.Image) -> Image.Image:
    """The heat map over one crop, at the crop's own size (what the model never saw is dimmed)."""
    picture = overlay_heatmap(explanation.photo, explanation.heatmap, explanation.img_size, max_side=None, min_side=0)
    if picture.size != crop.size:  # "pad" preprocessing: the crop sits centred in a padded square
        left, top = (picture.width - crop.width) // 2, (picture.height - crop.height) // 2
        picture = picture.crop((left, top, left + crop.width, top + crop.height))
    return picture


def objects_overlay(
    recognizer,
    photo: Image.Image,
    class_name: str | int | None = None,
    *,
    source=None,
    single: bool = False,
    score_threshold: float | None = None,
    max_side: int | None = DISPLAY_SIDE,
) -> tuple[Image.Image, list[dict]]:
    """One picture for a photo of several products: each product's Grad-CAM heat map over its own box
    (outlined), the rest of the photo as it is; and each object's record (box, score, explanation).
    ``source``: the already loaded ``(model, config)`` to explain with (default: the recogniser's)."""
    loaded = source if source is not None else load_explainable(recognizer)
    canvas = photo.convert("RGB")
    found = find_objects(recognizer, canvas, single=single, score_threshold=score_threshold)
    records, overlays = [], []
    for number, (obj, crop) in enumerate(found, 1):
        explanation = explain_image(loaded, crop, class_name)
        records.append({**_object_record(number, obj), **explanation.to_dict()})
        overlays.append((_crop_overlay(explanation, crop), tuple(round(v) for v in obj.box[:2])))
    for overlay, corner in reversed(overlays):  # where boxes overlap, the best product's heat map is on top
        canvas.paste(overlay, corner)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 200))  # about 4 px once shown at DISPLAY_SIDE
    for record in records:
        draw.rectangle(tuple(round(v) for v in record["box"]), outline=BOX_COLOUR, width=width)
    if max_side and max(canvas.size) > max_side:
        factor = max_side / max(canvas.size)
        canvas = canvas.resize(tuple(max(1, round(v * factor)) for v in canvas.size), Image.BILINEAR)
    return canvas, records


__all__ = ["explain_objects_to_files", "find_objects", "object_file", "objects_overlay"]
