"""The engines: a normalised NCHW float batch in, class (and attribute) probabilities or search
vectors out, from PyTorch on any device or from ONNX Runtime on the CPU.

Test-time augmentation lives here, once: ``tta=True`` averages the photo with its mirror image,
for the class and attribute probabilities and for the search vectors alike, whichever engine runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from skulens.errors import SkulensError
from skulens.models.attributes import ONNX_OUTPUT_PREFIX, attribute_probabilities, forward_all
from skulens.models.embedding import model_embeddings, unit_rows
from skulens.runs import ONNX_INT8, RunConfig
from skulens.runtime import autocast, to_device

Outputs = tuple[torch.Tensor, dict[str, torch.Tensor]]


def tta_views(x: torch.Tensor, tta: bool) -> list[torch.Tensor]:
    """The inputs one answer averages over: the batch, and with ``tta`` its horizontal mirror."""
    return [x, torch.flip(x, dims=[3])] if tta else [x]


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

    def outputs(self, x: torch.Tensor, tta: bool = False, attributes: bool = True) -> Outputs:
        """Class probabilities [N, C] and ``{attribute: probabilities}`` on the CPU (``attributes=False``:
        the class probabilities alone, with an empty dict)."""
        runs = [self._outputs(view, attributes and bool(self.attribute_specs)) for view in tta_views(x, tta)]
        if len(runs) == 1:
            return runs[0]
        probs = sum(r[0] for r in runs) / len(runs)
        attrs = {name: sum(r[1][name] for r in runs) / len(runs) for name in runs[0][1]}
        return probs, attrs

    def probabilities(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        return self.outputs(x, tta, attributes=False)[0]

    def embeddings(self, x: torch.Tensor, tta: bool = False) -> np.ndarray:
        """Unit-length search vectors, float32 (n, dim); with ``tta`` the mean of both views, renormalised."""
        vectors = [self._embeddings(view) for view in tta_views(x, tta)]
        return vectors[0] if len(vectors) == 1 else unit_rows(sum(vectors))

    def _outputs(self, x: torch.Tensor, attributes: bool) -> Outputs:
        raise NotImplementedError

    def _embeddings(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: torch.nn.Module, config: RunConfig, device: torch.device):
        super().__init__(config)
        self.model = model.eval()
        self.device = device

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor, attributes: bool) -> Outputs:
        x = to_device(x, self.device)
        with autocast(self.device):
            if not attributes:
                return self.model(x).float().softmax(-1).cpu(), {}
            logits, attrs = forward_all(self.model, x)
            attr_probs = attribute_probabilities(attrs, self.attribute_specs)
            return logits.float().softmax(-1).cpu(), {k: v.cpu() for k, v in attr_probs.items()}

    @torch.inference_mode()
    def _embeddings(self, x: torch.Tensor) -> np.ndarray:
        # no autocast: catalog vectors stay float32 on every device (a catalog's identity is its model)
        x = to_device(x, self.device)
        return model_embeddings(self.model, x).float().cpu().numpy().astype(np.float32)


class OnnxEngine(Engine):
    def __init__(self, path: Path, config: RunConfig, threads: int | None = None):
        super().__init__(config)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = "onnx-int8" if path.name == ONNX_INT8 else "onnx-fp32"
        self.path = path
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_embedding = "embedding" in outputs
        self.has_attributes = all(ONNX_OUTPUT_PREFIX + n in outputs for n in self.attribute_specs)
        self._output_names = [outputs[0]] + [ONNX_OUTPUT_PREFIX + n for n in self.attribute_specs]

    def _feed(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}

    def _outputs(self, x: torch.Tensor, attributes: bool) -> Outputs:
        if attributes and not self.has_attributes:
            raise SkulensError(
                f"the {self.name} engine of this run has no attribute outputs; use --engine torch "
                "(or re-export the run)"
            )
        logits, *attrs = self.session.run(self._output_names if attributes else self._output_names[:1], self._feed(x))
        specs = self.attribute_specs
        attr_probs = attribute_probabilities({n: torch.from_numpy(a) for n, a in zip(specs, attrs)}, specs)
        return torch.from_numpy(logits).float().softmax(-1), attr_probs

    def _embeddings(self, x: torch.Tensor) -> np.ndarray:
        if not self.has_embedding:
            raise SkulensError(f"the {self.name} export of this run has no embedding output; re-run `skulens export`")
        return self.session.run(["embedding"], self._feed(x))[0].astype(np.float32)
