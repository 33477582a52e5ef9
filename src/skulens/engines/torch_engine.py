"""``TorchEngine``: the run's PyTorch model on any device (bf16 autocast on CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from skulens.engines.base import Engine
from skulens.models.attributes import attribute_probabilities, forward_all
from skulens.models.embedding import model_embeddings
from skulens.runs import RunConfig
from skulens.runtime import autocast, to_device

Outputs = tuple[torch.Tensor, dict[str, torch.Tensor]]


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: torch.nn.Module, config: RunConfig, device: torch.device):
        super().__init__(config)
        self.model = model.eval()
        self.device = device

    def batch(self, inputs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(inputs))

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
