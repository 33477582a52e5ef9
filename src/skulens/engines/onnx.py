"""``OnnxEngine``: a run's ONNX export (FP32 or INT8) on ONNX Runtime, on the CPU.

Given a NumPy batch it answers in NumPy and never imports torch (a one-photo `skulens predict`
starts in a fraction of the time); given a torch tensor it answers in torch tensors, as the
PyTorch engine does, for evaluation and the export checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from skulens.engines.base import Batch, Engine, Outputs
from skulens.errors import SkulensError
from skulens.models.outputs import ONNX_OUTPUT_PREFIX, attribute_probabilities_np, softmax
from skulens.runs import ONNX_INT8, RunConfig


class OnnxEngine(Engine):
    def __init__(self, path: Path, config: RunConfig, threads: int | None = None, file_sha256: str | None = None):
        super().__init__(config)
        # The export file's digest (from the run's export record): two exports of the same weights
        # (static INT8 vs INT8 weights, another calibration) give different vectors, so catalogs tell them apart.
        self.file_sha256 = file_sha256
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

    def _feed(self, x: Batch) -> dict[str, np.ndarray]:
        array = x if isinstance(x, np.ndarray) else x.numpy()
        return {self.input_name: np.ascontiguousarray(array, dtype=np.float32)}

    def _outputs(self, x: Batch, attributes: bool) -> Outputs:
        if attributes and not self.has_attributes:
            raise SkulensError(
                f"the {self.name} engine of this run has no attribute outputs; use --engine torch "
                "(or re-export the run)"
            )
        logits, *attrs = self.session.run(self._output_names if attributes else self._output_names[:1], self._feed(x))
        specs = self.attribute_specs
        if isinstance(x, np.ndarray):
            return softmax(logits), attribute_probabilities_np(dict(zip(specs, attrs)), specs)
        import torch

        from skulens.models.attributes import attribute_probabilities

        attr_probs = attribute_probabilities({n: torch.from_numpy(a) for n, a in zip(specs, attrs)}, specs)
        return torch.from_numpy(logits).float().softmax(-1), attr_probs

    def _embeddings(self, x: Batch) -> np.ndarray:
        if not self.has_embedding:
            raise SkulensError(f"the {self.name} export of this run has no embedding output; re-run `skulens export`")
        return self.session.run(["embedding"], self._feed(x))[0].astype(np.float32)
