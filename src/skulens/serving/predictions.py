"""Turning a recognizer's Prediction into the API's RecognizeResponse."""

from __future__ import annotations

from typing import Any

from skulens.serving.schemas import Attribute, CategoryLevel, ProductHit, RecognizeResponse, ScoredClass


def level_confidences(path: list[str], scored: list[Any]) -> list[CategoryLevel]:
    """Each node's confidence is the probability mass of all classes under it (``scored`` covers every class),
    so a shopper sees 'Fruit 98% > Apple 90% > Granny-Smith 70%' rather than only the leaf's number."""
    levels = []
    for depth, name in enumerate(path, 1):
        prefix = list(path[:depth])
        mass = sum(float(s.confidence) for s in scored if list(s.path[:depth]) == prefix)
        levels.append(CategoryLevel(name=name, confidence=min(1.0, mass)))
    return levels


def _attributes(raw: Any) -> list[Attribute]:
    """Attributes in whichever shape the model gives: {name: value}, {name: (value, conf)},
    {name: {"value", "confidence"}} or a list of objects/dicts with name/value/confidence."""
    if not raw:
        return []
    out = []
    items = raw.items() if isinstance(raw, dict) else [(None, v) for v in raw]
    for name, value in items:
        conf = None
        if isinstance(value, dict):
            name, conf, value = value.get("name", name), value.get("confidence"), value.get("value")
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            value, conf = value
        elif hasattr(value, "value"):
            name, conf, value = getattr(value, "name", name), getattr(value, "confidence", None), value.value
        if name is None or value is None:
            continue
        out.append(Attribute(name=str(name), value=str(value), confidence=None if conf is None else float(conf)))
    return out


def to_response(
    prediction: Any, *, top_k: int, products: list[ProductHit], engine: str, elapsed_ms: float
) -> RecognizeResponse:
    scored = list(prediction.top_k) or []
    # Back-off fields exist only on recognizers that have them; read them defensively.
    answer = getattr(prediction, "answer_path", None)
    unknown = bool(getattr(prediction, "unknown", False))
    backed_off = answer is not None and (unknown or (len(answer) > 0 and list(answer) != list(prediction.path)))
    return RecognizeResponse(
        label=prediction.label,
        confidence=float(prediction.confidence),
        path=level_confidences(list(prediction.path), scored),
        answer_path=level_confidences(list(answer), scored) if backed_off else None,
        unknown=unknown,
        top_k=[ScoredClass(label=s.label, confidence=float(s.confidence), path=list(s.path)) for s in scored[:top_k]],
        attributes=_attributes(getattr(prediction, "attributes", None)),
        products=products,
        engine=engine,
        elapsed_ms=round(elapsed_ms, 2),
    )
