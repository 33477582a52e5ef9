"""Multi-process training and catalog import under torchrun, on 2 CPU processes (gloo).

One torchrun launch (two workers) does all the distributed work, because starting PyTorch in
three processes is the slow part on a small CI machine; the tests below check its records.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from skulens.data.datasets import Sample
from skulens.errors import SkulensError
from skulens.training.distributed import Context, env_world
from tests.conftest import write_class_folders
from tests.helpers import ROOT

# Runs on every rank. The interrupt is injected on all ranks at the same optimizer step, as a
# Ctrl-C that torchrun forwards to every worker would be.
WORKER = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path

    import torch

    import skulens.training.trainer as trainer_module
    from skulens.cli import main
    from skulens.data.datasets import load_dataset
    from skulens.data.transforms import AugmentConfig
    from skulens.errors import SkulensError
    from skulens.training import distributed
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    ctx = distributed.setup("cpu")
    record = {"rank": ctx.rank, "world": ctx.world_size, "sum": ctx.sum([ctx.rank + 1.0])[0]}

    # BatchNorm synced over the two ranks' halves against one process's BatchNorm over the batch
    import copy
    g = torch.Generator().manual_seed(0)
    # one channel with a mean 1,000 times its spread, as some activations have (one-pass variance fails there)
    spread, offset = torch.tensor([3.0, 0.05, 1.0]).view(1, 3, 1, 1), torch.tensor([1.0, 50.0, -2.0]).view(1, 3, 1, 1)
    x_full, w_out = torch.randn(8, 3, 5, 5, generator=g) * spread + offset, torch.randn(8, 3, 5, 5, generator=g)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=g)
        ref.bias.uniform_(-0.5, 0.5, generator=g)
    sync = distributed.GlooSyncBatchNorm.convert(torch.nn.Sequential(copy.deepcopy(ref)))[0]
    x_ref = x_full.clone().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * w_out).sum().backward()
    half = slice(4 * ctx.rank, 4 * ctx.rank + 4)
    x_mine = x_full[half].clone().requires_grad_()
    y_mine = sync(x_mine)
    (y_mine * w_out[half]).sum().backward()
    diff = lambda a, b: float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())
    record["syncbn"] = {"type": type(sync).__name__,
                        "out": diff(y_mine.detach(), y_ref.detach()[half]),
                        "input_grad": diff(x_mine.grad, x_ref.grad[half]),
                        "weight_grad": diff(ctx.sum(sync.weight.grad.tolist()), ref.weight.grad),
                        "bias_grad": diff(ctx.sum(sync.bias.grad.tolist()), ref.bias.grad),
                        "running_mean": diff(sync.running_mean, ref.running_mean),
                        "running_var": diff(sync.running_var, ref.running_var)}

    decoded = record["decoded"] = []
    class RecordingImages(trainer_module.DecodedImages):
        def __init__(self, samples, *args, **kwargs):
            decoded.append(sorted(str(s.path) for s in samples))
            super().__init__(samples, *args, **kwargs)
    trainer_module.DecodedImages = RecordingImages

    digests = record["step_digests"] = []
    step_calls = {"n": 0, "interrupt_at": None}
    original_step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        step_calls["n"] += 1
        if step_calls["n"] == step_calls["interrupt_at"]:
            raise KeyboardInterrupt
        result = original_step(self, *args, **kwargs)
        params = [p.detach().contiguous().numpy().tobytes() for g in self.param_groups for p in g["params"]]
        digests.append(hashlib.sha256(b"".join(params)).hexdigest())
        return result
    torch.optim.AdamW.step = step

    # no augmentation: the whole (square) photo every time, so an interrupted run can match exactly
    aug = AugmentConfig(scale_min=1.0, hflip=0, color_jitter=0, affine_prob=0)
    cfg = TrainConfig(model="seedcnn", epochs=2, img_size=32, batch_size=8, lr=2e-3, ema_decay=0.9, patience=0,
                      progress=False, augment=aug)
    dataset = load_dataset(data)
    result = train(cfg, dataset, out / "straight")
    record["best_val_acc"] = result.best_val_acc

    # Ctrl-C as epoch 2 ends (every rank is between its last step and validation)
    epoch_ends = {"n": 0}
    original_broadcast = distributed.Context.broadcast_state
    def broadcast_state(self, *modules):
        epoch_ends["n"] += 1
        if epoch_ends["n"] == 2:
            raise KeyboardInterrupt
        return original_broadcast(self, *modules)
    distributed.Context.broadcast_state = broadcast_state
    try:
        train(cfg, dataset, out / "resumed")
    except SkulensError as exc:
        record["interrupted"] = str(exc)
    distributed.Context.broadcast_state = original_broadcast
    main(["train", str(data), "--out", str(out / "resumed"), "--resume", "--no-progress"])

    # Ctrl-C in the middle of epoch 2: 36 images / batch 8 = 4 steps an epoch; the 7th step is cut
    step_calls.update(n=0, interrupt_at=7)
    try:
        train(cfg, dataset, out / "mid")
    except SkulensError as exc:
        record["interrupted_mid"] = str(exc)
    step_calls["interrupt_at"] = None
    record["mid_state"] = json.loads((out / "mid" / "train_state.json").read_text()) if ctx.is_main else None
    main(["train", str(data), "--out", str(out / "mid"), "--resume", "--no-progress"])

    # a catalog imported by both ranks, each embedding its share of the products
    db = out / "shop.db"
    common = ["--db", str(db), "--run", str(out / "straight"), "--device", "cpu", "--no-progress", "--json"]
    main(["catalog", "import", str(data), "--gallery-split", "train", *common])
    if ctx.is_main:  # lose two products, as a crash before their chunk committed would
        from skulens.catalog import Catalog
        with Catalog.open(db) as catalog:
            record["removed"] = catalog.remove(["red", "blue"])
    ctx.barrier()
    main(["catalog", "import", str(data), "--gallery-split", "train", *common])
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(record))
""")


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("ddp")
    data = write_class_folders(base / "data", per_class=12)
    out = base / "out"
    out.mkdir()
    worker = base / "worker.py"
    worker.write_text(WORKER)
    # loopback: gloo otherwise looks the host name up, which some CI containers cannot resolve
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(worker),
            str(data),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"data": data, "out": out, "ranks": ranks, "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.mark.slow
def test_ranks_average_gradients_and_train_on_disjoint_shards(ddp_job):
    r0, r1 = ddp_job["ranks"]
    assert (r0["world"], r1["world"]) == (2, 2) and r0["sum"] == r1["sum"] == 3.0
    # After every optimizer step both ranks hold the same weights, although each saw other images:
    # DDP averaged the gradients (without it they part at the first step).
    assert len(r0["step_digests"]) == len(r1["step_digests"]) > 8
    assert r0["step_digests"] == r1["step_digests"]
    train_images = sorted(str(p) for p in (ddp_job["data"] / "train").rglob("*.jpg"))
    shard0, shard1 = r0["decoded"][0], r1["decoded"][0]
    assert not set(shard0) & set(shard1) and sorted(shard0 + shard1) == train_images
    assert len(shard0) == len(shard1) == len(train_images) // 2


@pytest.mark.slow
def test_synced_batchnorm_computes_what_one_process_computes(ddp_job):
    for record in ddp_job["ranks"]:
        stats = record["syncbn"]
        assert stats.pop("type") == "GlooSyncBatchNorm"
        assert max(stats.values()) < 1e-4, stats  # outputs, gradients and running statistics


@pytest.mark.slow
def test_only_rank_zero_writes_and_metrics_cover_both_ranks(ddp_job):
    run = ddp_job["out"] / "straight"
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer: no duplicated rows
    # train accuracy is over all 32 images the two ranks trained on per epoch (2 x 4 steps x 4)
    for row in rows:
        assert abs(float(row["train_acc"]) * 32 - round(float(row["train_acc"]) * 32)) < 1e-3
    r0, r1 = ddp_job["ranks"]
    assert r0["best_val_acc"] == r1["best_val_acc"]  # rank 0's validation, shared
    assert float(rows[-1]["val_loss"]) < 0.8  # it learned: chance is ln 3 = 1.10
    assert (run / "model.safetensors").is_file() and (run / "curves.png").is_file()
    # the two resumed CLI runs: rank 0 reports, once each
    assert ddp_job["stdout"].count("trained 1 epoch(s)") + ddp_job["stdout"].count("trained 0 epoch(s)") == 2


@pytest.mark.slow
def test_learns_the_task_as_one_process_does(ddp_job, tmp_path):
    from skulens.data.datasets import load_dataset
    from skulens.data.transforms import AugmentConfig
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train

    aug = AugmentConfig(scale_min=1.0, hflip=0, color_jitter=0, affine_prob=0)
    cfg = TrainConfig(
        model="seedcnn",
        epochs=2,
        img_size=32,
        batch_size=8,
        lr=2e-3,
        ema_decay=0.9,
        patience=0,
        progress=False,
        augment=aug,
    )
    train(cfg, load_dataset(ddp_job["data"]), tmp_path / "one")
    one = list(csv.DictReader((tmp_path / "one" / "log.csv").open()))[-1]
    two = list(csv.DictReader((ddp_job["out"] / "straight" / "log.csv").open()))[-1]
    # 12 validation photos make accuracy coarse (one photo = 8 points); the loss is the finer measure
    assert float(one["val_loss"]) < 0.8 and float(two["val_loss"]) < 0.8
    assert abs(float(one["val_loss"]) - float(two["val_loss"])) < 0.2


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(ddp_job):
    r0, r1 = ddp_job["ranks"]
    assert "interrupted at epoch 2, batch 4" in r0["interrupted"] and "interrupted" in r1["interrupted"]
    out = ddp_job["out"]
    a = load_file(str(out / "straight" / "last.safetensors"))
    b = load_file(str(out / "resumed" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    rows = list(csv.DictReader((out / "resumed" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


@pytest.mark.slow
def test_interrupt_mid_epoch_saves_and_resumes(ddp_job):
    r0, r1 = ddp_job["ranks"]
    assert "interrupted at epoch 2, batch 2" in r0["interrupted_mid"] and "interrupted" in r1["interrupted_mid"]
    state = r0["mid_state"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 6)  # as rank 0 saved it
    final = json.loads((ddp_job["out"] / "mid" / "train_state.json").read_text())
    assert (final["epoch"], final["batch"], final["step"]) == (2, 0, 8)
    rows = list(csv.DictReader((ddp_job["out"] / "mid" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[-1]["val_loss"]) < 0.8


@pytest.mark.slow
def test_catalog_import_is_sharded_and_a_rerun_does_only_what_is_missing(ddp_job):
    from skulens.catalog import Catalog

    reports = [json.loads(chunk) for chunk in _json_documents(ddp_job["stdout"])]
    assert len(reports) == 2  # rank 0 speaks for the job
    first, second = reports
    assert (first["added"], first["unchanged"], first["rejected"]) == (3, 0, [])
    assert sorted(ddp_job["ranks"][0]["removed"]) == ["blue", "red"]
    assert (second["added"], second["unchanged"]) == (2, 1)
    assert second["images"] == 24  # only the two re-added products were embedded (12 train photos each)
    with Catalog.open(ddp_job["out"] / "shop.db") as catalog:
        assert len(catalog) == 3
        assert catalog.index().state.ntotal == 36


def _json_documents(text: str) -> list[str]:
    """The top-level JSON objects printed by ``--json`` in a stream that also holds other lines."""
    docs, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                docs.append(text[start : i + 1])
    return docs


# -- the pieces, without processes ------------------------------------------------------------------
def test_shards_are_disjoint_class_balanced_and_cover_everything():
    samples = [Sample(Path(f"{label}_{i}.jpg"), label, "train") for label in range(3) for i in range(10)]
    shards = [Context(rank=r, world_size=3).shard(samples, seed=5, key=lambda s: s.label) for r in range(3)]
    assert sorted(str(s.path) for shard in shards for s in shard) == sorted(str(s.path) for s in samples)
    for shard in shards:
        assert len(shard) == 10 and sorted({s.label for s in shard}) == [0, 1, 2]
        assert max(sum(s.label == c for s in shard) for c in range(3)) <= 4
    assert Context().shard(samples, seed=5) == samples
    # the same position in two shares rarely holds the same class (the ranks share one epoch permutation)
    assert sum(a.label == b.label for a, b in zip(shards[0], shards[1])) <= 5
    assert shards[0] == Context(rank=0, world_size=3).shard(samples, seed=5, key=lambda s: s.label)


def test_batch_is_global_and_must_split_evenly():
    assert Context(world_size=2).split_batch(16, 16) == (16, 8)
    assert Context(world_size=3).split_batch(None, 16) == (18, 6)
    assert Context().split_batch(None, 16) == (16, 16)
    with pytest.raises(SkulensError, match="multiple of 3"):
        Context(world_size=3).split_batch(16, 16)
    names = [f"sku-{i}" for i in range(50)]
    owners = [[n for n in names if Context(rank=r, world_size=2).owns(n)] for r in range(2)]
    assert sorted(owners[0] + owners[1]) == sorted(names) and owners[0] and owners[1]


def test_environment_is_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SkulensError, match="RANK=2 does not fit WORLD_SIZE=2"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(SkulensError, match="integers"):
        env_world()


def test_syncbn_conversion_keeps_weights_modes_and_is_plain_batchnorm_alone():
    from timm.layers import BatchNormAct2d

    from skulens.training.distributed import GlooSyncBatchNorm

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        BatchNormAct2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
        torch.nn.BatchNorm1d(5),
    )
    model(torch.randn(6, 3, 8, 8))
    model[1].weight.requires_grad_(False)
    model[1].eval()
    reference = __import__("copy").deepcopy(model)
    converted = GlooSyncBatchNorm.convert(model)
    assert all(isinstance(converted[i], GlooSyncBatchNorm) for i in (1, 2, 5))
    assert type(converted[2]).__name__ == "GlooSyncBatchNormAct"  # timm's fused layer keeps its activation
    assert not converted[1].training and converted[5].training and not converted[1].weight.requires_grad
    assert torch.equal(converted[1].running_var, reference[1].running_var)
    x = torch.randn(6, 3, 8, 8)
    # no process group: exactly plain BatchNorm, in training and in evaluation mode
    assert torch.allclose(converted(x), reference(x), atol=1e-6)
    converted.eval(), reference.eval()
    assert torch.allclose(converted(x), reference(x), atol=1e-6)


def test_syncbn_conversion_leaves_a_timm_efficientnet_unchanged_alone():
    import copy

    import timm

    from skulens.training.distributed import GlooSyncBatchNorm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    converted = GlooSyncBatchNorm.convert(copy.deepcopy(model))
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, GlooSyncBatchNorm) for m in converted.modules()) == n_bn > 40
    x = torch.randn(4, 3, 64, 64)
    assert torch.allclose(converted(x), model(x), atol=1e-5)  # training mode, one process
    converted.eval(), model.eval()
    assert torch.allclose(converted(x), model(x), atol=1e-5)
