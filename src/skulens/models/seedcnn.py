"""The plain CNN of our design notes (section 5.2), as a PyTorch module.

Conv(32)-Pool-Conv(64)-Pool-Conv(128)-Pool-Dense(512)-Dropout(0.5)-Dense(classes), 3x3 'valid'
convolutions with ReLU and 2x2 max pooling, exactly as the Keras example builds it, for any input
size and for grayscale or colour input. Kept flat and simple on purpose: ``skulens.nn_math`` can
replay it with NumPy.
"""

from __future__ import annotations

import torch
from torch import nn


def _feature_side(img_size: int) -> int:
    side = img_size
    for _ in range(3):
        side = (side - 2) // 2  # 3x3 valid conv, then 2x2 max pool
    return side


class SeedCNN(nn.Module):
    def __init__(self, num_classes: int, img_size: int = 150, in_chans: int = 3, drop_rate: float = 0.5):
        super().__init__()
        side = _feature_side(img_size)
        if side < 1:
            raise ValueError(f"seedcnn needs images of at least 22 px, got {img_size}")
        self.num_classes = num_classes
        self.num_features = 512
        self.conv1 = nn.Conv2d(in_chans, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(128 * side * side, 512)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.pool(torch.relu(self.conv3(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.relu(self.fc1(torch.flatten(x, 1))))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
