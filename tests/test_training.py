"""Training writes a complete run folder; reload gives the same predictions; resume continues exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from skulens import Recognizer
from skulens.data.datasets import load_dataset
from skulens.data.images import load_image
from skulens.data.transforms import Preprocessing, to_model_input
from skulens.errors import SkulensError
from skulens.evaluation.report import evaluate_run
from skulens.models.registry import ModelSpec, create_model
from skulens.runs import RunConfig, RunFolder, load_run
from skulens.training.config import TrainConfig
from skulens.training.trainer import Trainer, train
from tests.conftest import write_class_folders


def test_run_folder_contents_and_learning(trained_run):
    run, data = trained_run
    names = {p.name for p in run.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "log.csv",
        "curves.png",
        "last.safetensors",
        "train_state.json",
    } <= names
    assert not any(n.endswith((".pt", ".pth", ".pkl", ".bin")) for n in names)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "seedcnn" and config["classes"] == ["blue", "green", "red"]
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert len(rows) == 4
    metrics = evaluate_run(run, load_dataset(data), "test", progress=False)
    assert metrics["top1"] > 0.6  # chance is 1/3: it really learnt the colours


def test_checkpoint_round_trip_gives_the_same_predictions(trained_run, tmp_path):
    """A model trained here, in memory, saved as a run folder and reloaded answers exactly as it did
    before saving; a freshly initialised model of the same architecture does not."""
    _, data = trained_run
    classes = ["blue", "green", "red"]
    spec = ModelSpec("efficientnet_lite0", num_classes=3, img_size=40)  # has BatchNorm buffers to keep
    pre = Preprocessing(img_size=40, mean=spec.mean, std=spec.std)
    photos = sorted((data / "test").rglob("*.jpg"))
    x = torch.stack([to_model_input(load_image(p), pre) for p in photos])
    train_photos = [p for c in classes for p in sorted((data / "train" / c).glob("*.jpg"))[:4]]
    train_x = torch.stack([to_model_input(load_image(p), pre) for p in train_photos])
    train_y = torch.tensor([classes.index(p.parent.name) for p in train_photos])

    torch.manual_seed(0)
    original = create_model(spec, pretrained=False)
    original.train()
    # One SGD step moves the weights and the BatchNorm statistics away from their initial values.
    torch.nn.functional.cross_entropy(original(train_x), train_y).backward()
    torch.optim.SGD(original.parameters(), lr=0.01).step()
    original.eval()
    with torch.no_grad():
        logits = original(x)
    expected = logits.softmax(-1)

    run = tmp_path / "saved"
    RunFolder(run).save(RunConfig(model=spec, classes=classes, preprocessing=pre), original.state_dict())
    reloaded, config = RunFolder(run).load_model()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), logits)  # the same logits, BatchNorm statistics included
        torch.manual_seed(1)
        fresh = create_model(spec, pretrained=False).eval()
        assert (fresh(x) - logits).abs().max() > 0.1  # so the comparison above can fail
    assert config.classes == classes and config.model == spec

    recognizer = Recognizer.load(run, engine="torch", device="cpu")  # the user's way in, photo by photo
    for photo, probs in zip(photos, expected):
        prediction = recognizer.predict(photo)
        assert {c.label: c.confidence for c in prediction.top_k} == pytest.approx(
            dict(zip(classes, probs.tolist())), abs=1e-5
        )
        assert prediction.label == classes[int(probs.argmax())] and prediction.path == [prediction.label]


def test_class_weighting_ema_and_eval_size_choice(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=8)
    cfg = TrainConfig(
        model="efficientnet_lite0",
        epochs=1,
        img_size=32,
        batch_size=8,
        class_weighting=True,
        ema_decay=0.9,
        eval_sizes=[40],
        freeze_stages=3,
        progress=False,
    )
    train(cfg, load_dataset(data), tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # The choice recomputed here: val top-1 of the kept weights at each candidate size, the best wins
    # (a tie goes to the size nearest the training size).
    model, run_config = load_run(tmp_path / "run")
    val = sorted((data / "val").rglob("*.jpg"))
    truth = torch.tensor([run_config.classes.index(p.parent.name) for p in val])

    def val_top1(size: int) -> float:
        x = torch.stack([to_model_input(load_image(p), run_config.preprocessing, size) for p in val])
        with torch.no_grad():
            return float((model(x).argmax(1) == truth).float().mean())

    scores = {size: val_top1(size) for size in (32, 40)}
    assert config["metrics"]["val_top1_by_eval_size"] == pytest.approx({str(s): v for s, v in scores.items()})
    best = max(scores, key=lambda s: (scores[s], -abs(s - 32)))
    assert config["preprocessing"]["img_size"] == best
    assert config["metrics"]["val_top1"] == pytest.approx(scores[best])
    # seedcnn's classifier is tied to its training size: no other size is tried.
    cfg = TrainConfig(model="seedcnn", epochs=1, img_size=32, batch_size=8, eval_sizes=[40], progress=False)
    train(cfg, load_dataset(data), tmp_path / "seed")
    config = json.loads((tmp_path / "seed" / "config.json").read_text())
    assert set(config["metrics"]["val_top1_by_eval_size"]) == {"32"}


def test_keep_last_saves_the_final_epoch(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=6)
    cfg = TrainConfig(model="seedcnn", epochs=2, img_size=32, batch_size=8, keep="last", patience=0, progress=False)
    train(cfg, load_dataset(data), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["metrics"]["epoch"] == 2


def test_unreadable_training_images_are_skipped(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=6)
    (data / "train" / "red" / "broken.jpg").write_text("not an image")
    cfg = TrainConfig(model="seedcnn", epochs=1, img_size=32, batch_size=8, progress=False)
    dataset = load_dataset(data)
    result = train(cfg, dataset, tmp_path / "run")
    assert result.skipped_images == 1
    assert result.images_per_epoch == len(dataset.split("train")) - 1  # what the epoch trained on


def test_existing_run_is_not_overwritten(trained_run):
    run, data = trained_run
    with pytest.raises(SkulensError, match="--resume"):
        train(TrainConfig(model="seedcnn", epochs=1, img_size=40, progress=False), load_dataset(data), run)


def test_interrupt_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "d", per_class=6)
    dataset = load_dataset(data)
    cfg = TrainConfig(model="seedcnn", epochs=2, img_size=32, batch_size=8, ema_decay=0.9, patience=0, progress=False)
    train(cfg, dataset, tmp_path / "straight")

    original = Trainer._validate
    calls = {"n": 0}

    def interrupt_in_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_validate", interrupt_in_second_epoch)
    with pytest.raises(SkulensError, match="interrupted"):
        train(cfg, dataset, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed" / "train_state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 2)  # 18 images, batch 8: 2 batches done in epoch 2
    monkeypatch.setattr(Trainer, "_validate", original)
    train(cfg, dataset, tmp_path / "resumed", resume=True)

    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    rows = list(csv.DictReader((tmp_path / "resumed" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_interrupt_mid_epoch_saves_and_resumes(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "d", per_class=6)
    dataset = load_dataset(data)
    cfg = TrainConfig(model="seedcnn", epochs=2, img_size=32, batch_size=4, patience=0, progress=False)
    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def interrupt_on_sixth_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupt_on_sixth_step)
    with pytest.raises(SkulensError, match="interrupted at epoch 2, batch 1"):
        train(cfg, dataset, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 5)
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    result = train(cfg, dataset, tmp_path / "run", resume=True)
    assert result.epochs_run == 1
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (2, 0, 8)


def test_loader_workers_run_the_augmentation_in_other_processes(tmp_path, monkeypatch):
    import os

    import skulens.training.trainer as trainer_module
    from skulens.training.trainer import loader_workers

    seen = tmp_path / "pids"
    seen.mkdir()
    original = trainer_module.DecodedImages.__getitem__

    def getitem(self, i):
        (seen / str(os.getpid())).touch()  # files, because the workers are other processes
        return original(self, i)

    monkeypatch.setattr(trainer_module.DecodedImages, "__getitem__", getitem)
    data = write_class_folders(tmp_path / "d", per_class=6)
    cfg = TrainConfig(model="seedcnn", epochs=1, img_size=32, batch_size=8, patience=0, progress=False, workers=2)
    result = train(cfg, load_dataset(data), tmp_path / "run")
    assert result.epochs_run == 1 and (tmp_path / "run" / "model.safetensors").is_file()
    pids = {int(p.name) for p in seen.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert loader_workers(None, torch.device("cpu")) == 0 and loader_workers(3, torch.device("cpu")) == 3
    assert 1 <= loader_workers(None, torch.device("cuda"), world_size=64) <= 8
    with pytest.raises(SkulensError, match="workers"):
        loader_workers(-1, torch.device("cpu"))


def test_mixing_and_stochastic_depth_reach_the_training_loop(tmp_path, monkeypatch):
    import skulens.training.trainer as trainer_module
    from skulens.models.registry import ModelSpec, create_model

    calls = []
    real = trainer_module.mix_batch

    def counting(x, *args):
        out, mix = real(x, *args)
        calls.append(mix is not None)
        return out, mix

    monkeypatch.setattr(trainer_module, "mix_batch", counting)
    data = write_class_folders(tmp_path / "d", per_class=6)
    cfg = TrainConfig(
        model="seedcnn", epochs=1, img_size=32, batch_size=4, mix_prob=1.0, keep="last", patience=0, progress=False
    )
    train(cfg, load_dataset(data), tmp_path / "run")
    assert calls and all(calls)  # every batch blended at mix_prob 1
    log = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert np.isfinite(float(log[0]["train_loss"]))
    with pytest.raises(SkulensError, match="ArcFace"):
        train(
            TrainConfig(model="seedcnn", epochs=1, img_size=32, mix_prob=0.5, embedding_dim=8, progress=False),
            load_dataset(data),
            tmp_path / "arc",
        )
    with pytest.raises(SkulensError, match="mix-prob"):
        train(
            TrainConfig(model="seedcnn", epochs=1, img_size=32, mix_prob=1.5, progress=False),
            load_dataset(data),
            tmp_path / "bad",
        )
    model = create_model(
        ModelSpec(name="efficientnet_lite0", num_classes=3, img_size=32, drop_path_rate=0.2), pretrained=False
    )
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.02)
