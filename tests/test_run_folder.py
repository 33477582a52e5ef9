"""The run folder's one owner: checksums on every load (nn_math included), timm can read a plain
classifier run, and the model card states what the folder backs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from skulens.errors import CheckpointError
from skulens.runs import RunConfig, RunFolder


def _timm_run(tmp_path, name="efficientnet_lite0"):
    from skulens.data.transforms import Preprocessing
    from skulens.models.registry import ModelSpec, create_model

    spec = ModelSpec(name=name, num_classes=3, img_size=64)
    model = create_model(spec, pretrained=False).eval()
    config = RunConfig(spec, ["red", "green", "blue"], Preprocessing(64, spec.mean, spec.std))
    RunFolder(tmp_path / "run").save(config, model.state_dict())
    return tmp_path / "run", model


def test_timm_loads_a_plain_classifier_run_with_the_same_logits(tmp_path):
    import timm

    from skulens.engines import load_engine

    run, model = _timm_run(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    loaded = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    with torch.no_grad():
        theirs, ours = loaded(x), model(x)
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert loaded.pretrained_cfg["label_names"] == ["red", "green", "blue"]
    # and what skulens itself answers for the same folder is the same softmax
    probs = load_engine(run, "torch", "cpu").probabilities(x)
    assert torch.allclose(probs, ours.softmax(-1), atol=1e-5)
    # a random model of the same architecture does not pass (the check can fail)
    other = timm.create_model("efficientnet_lite0", num_classes=3).eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), ours, atol=1e-3)


def test_runs_timm_cannot_rebuild_carry_no_timm_keys(trained_run):
    config = json.loads((trained_run[0] / "config.json").read_text())
    assert config["model"]["name"] == "seedcnn" and "architecture" not in config


def test_a_tampered_weight_file_is_refused_everywhere(trained_run, tmp_path):
    import shutil

    from skulens.engines import load_engine
    from skulens.nn_math import load_seedcnn_weights

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    assert load_seedcnn_weights(run)["conv1.weight"].shape[0] == 32  # intact: loads
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    for load in (
        lambda: RunFolder(run).load_model(),
        lambda: load_engine(run, "torch", "cpu"),
        lambda: load_seedcnn_weights(run),
    ):
        with pytest.raises(CheckpointError, match="does not match its recorded checksum"):
            load()


def test_model_card_states_what_the_folder_holds(trained_run, tmp_path):
    import shutil

    from skulens.data.datasets import load_dataset
    from skulens.evaluation.report import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    card = (run / "README.md").read_text()
    config = json.loads((run / "config.json").read_text())
    assert f"{100 * config['metrics']['val_top1']:.2f}%" in card and "not evaluated yet" in card
    assert "`seedcnn`" in card and "## Limits" in card
    m = evaluate_run(run, load_dataset(trained_run[1]), "test", engine="torch", progress=False)
    card = (run / "README.md").read_text()
    assert f"| test | {m['n_images']} | {100 * m['top1']:.2f}% |" in card and "not evaluated yet" not in card


def test_choose_on_val_picks_what_val_prefers_and_scores_test_once(trained_run, tmp_path):
    from skulens.data.datasets import load_dataset
    from skulens.engines import load_engine
    from skulens.evaluation.inference import dataset_probabilities, split_samples
    from skulens.evaluation.report import evaluate_run

    run, data = trained_run
    dataset = load_dataset(data)
    m = evaluate_run(run, dataset, "test", engine="torch", choose_flip=True, out_dir=tmp_path, progress=False)
    # recomputed here, independently: val top-1 with and without the flip
    engine = load_engine(run, "torch", "cpu")
    samples = split_samples(dataset, "val", engine.config.classes)
    scores = {}
    for flip in (False, True):
        probs, labels, _, _ = dataset_probabilities(
            lambda x, f=flip: engine.probabilities(x, f), samples, engine.config.preprocessing, progress=False
        )
        scores[flip] = float(np.mean(probs.argmax(1) == labels))
    expected = scores[True] > scores[False]  # ties go to the simpler setting: no flip
    assert m["tta_hflip"] is expected and m["chosen_on_val"]["tta_hflip"] is expected
    assert {(c["tta_hflip"], c["val_top1"]) for c in m["chosen_on_val"]["candidates"]} == set(scores.items())
    with pytest.raises(Exception, match="chosen on the val split"):
        evaluate_run(run, dataset, "val", engine="torch", choose_flip=True, out_dir=tmp_path, progress=False)
