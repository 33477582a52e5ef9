"""A model's outputs in NumPy: class and attribute probabilities from logits, one image's attributes
as a Prediction carries them, unit-length search vectors. No torch here: the ONNX engine and the
Recognizer use these without importing it (issue 22, fast start-up)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Name prefix of the per-attribute outputs an ONNX export carries (``attribute:colour``).
ONNX_OUTPUT_PREFIX = "attribute:"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (the largest logit is subtracted first, as torch does)."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def attribute_probabilities_np(logits: dict[str, np.ndarray], specs: dict[str, dict]) -> dict[str, np.ndarray]:
    """NumPy twin of :func:`skulens.models.attributes.attribute_probabilities`: softmax per group, sigmoid per tag."""
    return {name: softmax(v) if specs[name]["kind"] == "softmax" else sigmoid(v) for name, v in logits.items()}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (float32; an all-zero row stays zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def describe(
    attr_probs: dict[str, torch.Tensor | np.ndarray],
    specs: dict[str, dict],
    thresholds: dict[str, list[float]] | None = None,
) -> dict[str, dict]:
    """One image's attributes as a Prediction carries them: ``{"value", "confidence"}`` for a softmax
    attribute; for tags, ``value`` joins the tags above their thresholds with "|" ("-": none, as in
    the CSV), ``confidence`` is None and ``tags`` maps each of them to its probability. ``value`` is
    always a string, which is what the HTTP service's attribute schema takes."""
    out: dict[str, dict] = {}
    for name, spec in specs.items():
        p = np.asarray(attr_probs[name], dtype=np.float64)
        if spec["kind"] == "softmax":
            best = int(p.argmax())
            out[name] = {"value": spec["values"][best], "confidence": float(p[best])}
        else:
            thr = (thresholds or {}).get(name) or [0.5] * len(p)
            chosen = [j for j in np.argsort(-p, kind="stable") if p[j] >= thr[j]]
            out[name] = {
                "value": "|".join(spec["values"][j] for j in chosen) or "-",
                "confidence": None,
                "tags": {spec["values"][j]: float(p[j]) for j in chosen},
            }
    return out
