"""Why the model said what it said: Grad-CAM heat maps and first-layer feature maps.

    from skulens.explain import gradcam_overlay
    gradcam_overlay("runs/grocery", "photo.jpg").save("heat.png")
    explain_objects_to_files(Recognizer.load(run, detector=DIR), "shelf.jpg", out="heat.png")  # per product

Explanations need gradients, so they always run the PyTorch weights of a run (also when its
Recognizer uses ONNX Runtime).
"""

from skulens.explain.feature_maps import feature_map_grid, feature_map_image, feature_maps
from skulens.explain.gradcam import (
    Explanation,
    explain_image,
    feature_split,
    gradcam,
    gradcam_overlay,
    gradcam_with_scores,
    overlay_heatmap,
)
from skulens.explain.objects import explain_objects_to_files, objects_overlay

__all__ = [
    "Explanation",
    "explain_image",
    "explain_objects_to_files",
    "feature_map_grid",
    "feature_map_image",
    "feature_maps",
    "feature_split",
    "gradcam",
    "gradcam_overlay",
    "gradcam_with_scores",
    "objects_overlay",
    "overlay_heatmap",
]
