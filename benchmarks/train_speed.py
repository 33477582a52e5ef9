"""Training throughput on this machine: which CPU settings are fast (memory format, batch, freezing).

    python benchmarks/train_speed.py [--steps 6]

Times full optimisation steps (forward, backward, AdamW) on random 224 px batches, all
configurations in one run so the ratios are comparable; saves benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch

from skulens.models.registry import ModelSpec, create_model
from skulens.training.trainer import freeze_leading_stages

CONFIGS = [  # (model, img size, batch, channels_last, frozen stages)
    ("efficientnet_lite0", 224, 32, False, 0),
    ("efficientnet_lite0", 224, 32, True, 0),
    ("efficientnet_lite0", 224, 16, True, 0),
    ("efficientnet_lite0", 224, 16, True, 3),
    ("efficientnet_lite2", 224, 16, True, 0),
    ("efficientnet_lite2", 224, 16, True, 3),
    ("efficientnet_lite2", 260, 16, True, 3),
    ("seedcnn", 150, 32, False, 0),
]


def measure(name, size, batch, channels_last, frozen, steps) -> float:
    model = create_model(ModelSpec(name, num_classes=81, img_size=size))
    frozen_modules = freeze_leading_stages(model, frozen)
    model.train()
    for module in frozen_modules:
        module.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 81, (batch,))
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, size, batch, cl, frozen in CONFIGS:
        ips = measure(name, size, batch, cl, frozen, args.steps)
        rows.append(
            {
                "model": name,
                "img_size": size,
                "batch": batch,
                "channels_last": cl,
                "frozen_stages": frozen,
                "train_images_per_s": round(ips, 1),
            }
        )
        print(
            f"{name:20s} {size}px batch {batch:2d} channels_last={cl!s:5s} frozen={frozen}: {ips:6.1f} img/s",
            flush=True,
        )
    base = rows[0]["train_images_per_s"]
    for row in rows:
        row["ratio_vs_first"] = round(row["train_images_per_s"] / base, 2)
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "train_speed.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
