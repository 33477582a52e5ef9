"""The engines: a normalised NCHW float batch in, class (and attribute) probabilities or search
vectors out, from PyTorch on any device (:mod:`skulens.engines.torch_engine`) or from ONNX Runtime
on the CPU (:mod:`skulens.engines.onnx`).

Test-time augmentation lives here, once: ``tta=True`` averages the photo with its mirror image,
for the class and attribute probabilities and for the search vectors alike, whichever engine runs.
A batch is a torch tensor or a NumPy array, and the answer comes back in the same kind; nothing
here imports torch, so predicting with an ONNX export never does (issue 22, fast start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from skulens.models.outputs import unit_rows
from skulens.runs import RunConfig

if TYPE_CHECKING:
    import torch

# A batch of model inputs, and the probabilities coming back: torch tensors or NumPy arrays.
Batch = Any  # torch.Tensor | np.ndarray
Outputs = tuple[Any, dict[str, Any]]


def tta_views(x: torch.Tensor | np.ndarray, tta: bool) -> list:
    """The inputs one answer averages over: the batch, and with ``tta`` its horizontal mirror."""
    if not tta:
        return [x]
    return [x, np.flip(x, axis=3).copy() if isinstance(x, np.ndarray) else x.flip(3)]


class Engine:
    """``outputs``, ``probabilities`` and ``embeddings`` of a normalised float batch; ``name`` says
    which engine runs. Subclasses compute one view (``_outputs``, ``_embeddings``)."""

    name = "engine"
    has_attributes = True
    has_embedding = True

    def __init__(self, config: RunConfig):
        self.config = config

    @property
    def attribute_specs(self) -> dict[str, dict]:
        return self.config.model.attributes

    def batch(self, inputs: list[np.ndarray]) -> Batch:
        """Model inputs (:func:`~skulens.data.transforms.image_to_array`) stacked as the batch this
        engine takes: a NumPy array (the PyTorch engine makes it a torch tensor)."""
        return np.stack(inputs)

    def outputs(self, x: Batch, tta: bool = False, attributes: bool = True) -> Outputs:
        """Class probabilities [N, C] and ``{attribute: probabilities}`` on the CPU (``attributes=False``:
        the class probabilities alone, with an empty dict), as torch tensors or NumPy arrays like ``x``."""
        runs = [self._outputs(view, attributes and bool(self.attribute_specs)) for view in tta_views(x, tta)]
        if len(runs) == 1:
            return runs[0]
        probs = sum(r[0] for r in runs) / len(runs)
        attrs = {name: sum(r[1][name] for r in runs) / len(runs) for name in runs[0][1]}
        return probs, attrs

    def probabilities(self, x: Batch, tta: bool = False) -> Batch:
        return self.outputs(x, tta, attributes=False)[0]

    def embeddings(self, x: Batch, tta: bool = False) -> np.ndarray:
        """Unit-length search vectors, float32 (n, dim); with ``tta`` the mean of both views, renormalised."""
        vectors = [self._embeddings(view) for view in tta_views(x, tta)]
        return vectors[0] if len(vectors) == 1 else unit_rows(sum(vectors))

    def _outputs(self, x: Batch, attributes: bool) -> Outputs:
        raise NotImplementedError

    def _embeddings(self, x: Batch) -> np.ndarray:
        raise NotImplementedError
