"""The Python API (skulens.api: Run, Catalog) and recipe files (skulens.training.recipe): the API gives
what the Recognizer gives, a run trained again from its own recipe.toml is the same run, and a bad
recipe is refused in one line."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from skulens.api import DEMO_RECIPE, Run
from skulens.cli import build_parser, main
from skulens.data.datasets import CsvColumns
from skulens.data.transforms import AugmentConfig
from skulens.errors import SkulensError
from skulens.recognition.recognizer import Recognizer
from skulens.training.config import TrainConfig
from skulens.training.recipe import DATA_SETTINGS, Recipe, read_recipe, resolve, train_settings
from tests.conftest import COLOURS, coloured_photo, jpeg_bytes, write_class_folders

ROOT = Path(__file__).resolve().parents[1]


# --- Run: the Python API ---------------------------------------------------------------------------


def test_run_opens_a_run_folder_and_refuses_anything_else(trained_run, tmp_path):
    run_dir, _ = trained_run
    run = Run(run_dir)
    assert sorted(run.classes) == sorted(COLOURS) and run.path == run_dir
    for folder, message in ((tmp_path / "nope", "run folder not found"), (tmp_path, "not a skulens run")):
        with pytest.raises(SkulensError, match=message) as caught:
            Run(folder)
        assert "\n" not in str(caught.value)


def test_predict_gives_the_recognizers_probabilities(trained_run, tmp_path):
    run_dir, data = trained_run
    photos = sorted((data / "test").rglob("*.jpg"))
    run = Run(run_dir)
    recognizer = Recognizer.load(run_dir, engine="torch", device="cpu")
    expected = recognizer.predict_batch(photos[:8], top_k=3) + recognizer.predict_batch(photos[8:], top_k=3)
    got = run.predict(photos, top_k=3, engine="torch", device="cpu")
    assert [p.source for p in got] == [str(p) for p in photos]
    for a, b in zip(got, expected):
        assert [(c.label, c.confidence) for c in a.top_k] == [(c.label, c.confidence) for c in b.top_k]
    # a folder, bytes and a PIL image are images too; one image gives a list of one
    by_folder = run.predict(data / "test" / "red", top_k=3, engine="torch", device="cpu")
    assert [p.source for p in by_folder] == [str(p) for p in sorted((data / "test" / "red").glob("*.jpg"))]
    photo = coloured_photo(COLOURS["green"], 7)
    (single,) = run.predict(photo, top_k=3, engine="torch", device="cpu")
    (from_bytes,) = run.predict(jpeg_bytes(photo, quality=100), engine="torch", device="cpu")
    assert single.top_k[0].confidence == pytest.approx(recognizer.predict(photo, top_k=3).confidence, abs=1e-6)
    assert from_bytes.label == recognizer.predict(jpeg_bytes(photo, quality=100)).label
    # predict_files: a bad file or an empty folder is an error line, the rest are answered
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jpg").write_text("not a photo")
    results = list(
        run.predict_files([tmp_path / "empty", tmp_path / "bad.jpg", photos[0]], engine="torch", device="cpu")
    )
    assert [(Path(p).name, pred is None, bool(err)) for p, pred, err in results] == [
        ("empty", True, True),
        ("bad.jpg", True, True),
        (photos[0].name, False, False),
    ]
    assert "no images in this folder" in results[0][2] and "not an image" in results[1][2]


def test_run_dataset_and_evaluate_default_to_the_runs_own_data(trained_run, tmp_path):
    run_dir, data = trained_run
    run = Run(run_dir)
    assert run.dataset().root == run.dataset(data).root == data
    metrics = run.evaluate(split="test", engine="torch", device="cpu", out=tmp_path / "eval", progress=False)
    assert metrics["n_images"] == 15 and (tmp_path / "eval" / "report.md").is_file()


def test_catalog_open_import_search(trained_run, tmp_path):
    from skulens import Catalog

    run_dir, data = trained_run
    with Catalog.open(tmp_path / "shop.db", run_dir, device="cpu") as catalog:
        report = catalog.import_(data, gallery_split="train", progress=False)
        assert (report.added, report.rejected) == (3, [])
        assert catalog.import_(data, gallery_split="train", progress=False).unchanged == 3  # idempotent
        assert catalog.search(coloured_photo(COLOURS["red"], 99), top_k=3)[0].sku == "red"
        assert {h.sku for h in catalog.similar("red", top_k=2)} == {"green", "blue"}
    with Catalog.open(tmp_path / "shop.db") as catalog:  # no model: reading only
        assert len(catalog) == 3
    with pytest.raises(SkulensError, match="no such file"):
        Catalog.import_job(tmp_path / "shop.db", tmp_path / "missing.csv", run=run_dir, device="cpu")


def test_import_skulens_is_light_and_lazy():
    code = (
        "import sys, skulens; from skulens.cli import build_parser; build_parser().format_help(); "
        "assert 'torch' not in sys.modules, 'torch imported'; from skulens import Run, Catalog, Recognizer; "
        "print(Run.__module__, Catalog.__module__, Recognizer.__module__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["skulens.api", "skulens.catalog.store", "skulens.recognition.recognizer"]


# --- recipes -----------------------------------------------------------------------------------------


def test_every_optional_setting_defaults_to_none():
    """TOML has no null: a None is left out of a recipe and read back as the default, so it must be None."""
    for cls in (TrainConfig, AugmentConfig):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if type(None) in typing.get_args(hints[f.name]):
                assert f.default is None, f.name
    assert {s.name: s.default for s in DATA_SETTINGS if s.default is not None} == {
        "image_column": CsvColumns.image,
        "label": CsvColumns.label,
        "split_column": CsvColumns.split,
    }


def test_a_resolved_recipe_reads_back_as_the_same_config(tmp_path):
    recipe = {
        "model": "seedcnn",
        "epochs": 3,
        "img_size": 48,
        "lr": 5e-4,
        "warmup_epochs": 2,
        "eval_sizes": [48, 56],
        "train_splits": ["train", "val"],
        "keep": "last",
        "pretrained": False,
        "weights": "w.safetensors",
        "augment": {"hue_jitter": 0, "scale_min": 0.5},
        "data": {"label": "kind", "tree_columns": ["dept"], "attribute_columns": ["colour"]},
    }
    resolved = resolve(recipe, {"epochs": 4, "augment": {"zoom": 0.1}})
    cfg = resolved.train
    assert (cfg.epochs, cfg.lr, cfg.warmup_epochs, cfg.augment.zoom, cfg.augment.scale_min) == (4, 5e-4, 2.0, 0.1, 0.5)
    assert isinstance(cfg.warmup_epochs, float) and cfg.batch_size is None
    path = resolved.write(tmp_path / "recipe.toml", "a header\nof two lines")
    text = path.read_text()
    assert text.startswith("# a header\n# of two lines\n") and "batch_size" not in text  # None: left out
    again = resolve(path)
    assert again.train == cfg and again.data == resolved.data
    assert again.csv_columns() == CsvColumns(label="kind", tree=["dept"], attributes=["colour"])
    assert resolve(path, {"epochs": 9}).train.epochs == 9  # overrides win over the file
    assert resolve().train == TrainConfig()


def test_the_demo_recipe_file_is_the_demos_settings():
    assert resolve(ROOT / "recipes" / "demo.toml").train == resolve(DEMO_RECIPE).train


def test_every_recipe_in_the_repository_reads(tmp_path):
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        resolved = resolve(path)
        assert resolve(resolved.write(tmp_path / path.name)).train == resolved.train, path.name


def test_recipe_round_trip_trains_the_same_weights(tmp_path, capsys):
    data = write_class_folders(tmp_path / "shop", per_class=6)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'model = "seedcnn"\nepochs = 3\nimg_size = 32\nbatch_size = 8\nlr = 2e-3\npatience = 0\n'
        'seed = 5\ndevice = "cpu"\nprogress = false\n\n[augment]\nhue_jitter = 0.0\n'
    )
    first = Run.train(data, recipe=recipe, out=tmp_path / "a", epochs=1, lr=3e-3)  # overrides win over the file
    own = first.path / "recipe.toml"
    assert own.is_file() and f"--config {own}" in own.read_text()
    assert read_recipe(own)["lr"] == 3e-3 and read_recipe(own)["epochs"] == 1 and read_recipe(own)["seed"] == 5
    # the same run again, from the command line and the run's own recipe
    assert main(["train", str(data), "--config", str(own), "--out", str(tmp_path / "b")]) == 0
    assert "trained 1 epoch(s)" in capsys.readouterr().out
    assert (
        resolve(tmp_path / "b" / "recipe.toml").train
        == resolve(own).train
        == resolve(recipe, {"epochs": 1, "lr": 3e-3}).train
    )
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a flag overrides the recipe: a different seed gives different weights
    assert main(["train", str(data), "--config", str(own), "--seed", "6", "--out", str(tmp_path / "c")]) == 0
    assert read_recipe(tmp_path / "c" / "recipe.toml")["seed"] == 6
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "text, message",
    [
        ("eopchs = 3\n", "unknown key 'eopchs' (did you mean 'epochs'?)"),
        ("[augment]\nhue_jiter = 0.0\n", "unknown key 'augment.hue_jiter' (did you mean 'augment.hue_jitter'?)"),
        ("hue_jitter = 0.0\n", "unknown key 'hue_jitter': it belongs in the [augment] table"),
        ('[dataa]\nlabel = "x"\n', "unknown key 'dataa' (did you mean 'data'?)"),
        ('epochs = "ten"\n', "epochs must be an integer, not a string ('ten')"),
        ("lr = true\n", "lr must be a number, not a boolean (True)"),
        ('eval_sizes = [256, "288"]\n', "eval_sizes must be a list of integers"),
        ('keep = "bset"\n', "keep must be one of best, last, not 'bset'"),
        ("augment = 3\n", "augment must be a table ([augment])"),
        ("epochs = 0\n", "epochs must be at least 1"),
        ("epochs = \n", "not valid TOML"),
        (None, "recipe file not found"),
    ],
)
def test_a_bad_recipe_is_refused_in_one_line(tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.toml"
    if text is not None:
        recipe.write_text(text)
    assert main(["train", str(tmp_path), "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skulens: error: {recipe}: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_bad_override_names_the_nearest_setting(tmp_path):
    with pytest.raises(SkulensError, match=r"unknown key 'epoks' \(did you mean 'epochs'\?\)"):
        Run.train(tmp_path, out=tmp_path / "run", epoks=1)
    with pytest.raises(SkulensError, match="freeze_stages must be an integer"):
        Run.train(tmp_path, out=tmp_path / "run", freeze_stages=1.5)


def test_a_bad_recipe_exits_2_from_the_command_line(tmp_path):
    (tmp_path / "bad.toml").write_text("eopchs = 3\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skulens",
            "train",
            str(tmp_path),
            "--config",
            str(tmp_path / "bad.toml"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"skulens: error: {tmp_path / 'bad.toml'}: unknown key 'eopchs' (did you mean 'epochs'?)"
    ]


def test_train_help_shows_every_setting_and_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for setting in train_settings():
        assert setting.flag in text, setting.name
    for fragment in (
        "--epochs N epochs to train (default: 10)",
        "(default: efficientnet_lite0)",
        "--no-pretrained random init instead of ImageNet weights (recipe: pretrained; default: true)",
        "--threads N CPU threads (recipe: num_threads; default: all cores)",
        "(recipe: augment.hue_jitter; default: min(0.05, color_jitter/6))",
        "--eval-sizes A,B",
        "--config RECIPE",
        "(recipe: data.label; default: label)",
    ):
        assert fragment in text, fragment


def test_todays_flags_still_work():
    args = build_parser().parse_args(
        [
            "train",
            "d",
            "--out",
            "o",
            "--no-pretrained",
            "--grayscale",
            "--no-augment",
            "--no-sync-bn",
            "--threads",
            "2",
            "--hue-jitter",
            "0",
            "--eval-sizes",
            "256,288",
            "--train-splits",
            "train,val",
            "--label",
            "kind",
            "--tree-columns",
            "a,b",
            "--seed",
            "4",
        ]
    )
    from skulens.cli.options import columns_given
    from skulens.training.recipe import overrides_from_args

    overrides = overrides_from_args(args)
    cfg = resolve(None, overrides).train
    assert (cfg.pretrained, cfg.in_chans, cfg.sync_bn, cfg.num_threads, cfg.seed) == (False, 1, False, 2, 4)
    assert cfg.eval_sizes == [256, 288] and cfg.train_splits == ["train", "val"]
    assert cfg.augment == AugmentConfig(scale_min=1.0, hflip=0.0, color_jitter=0.0, hue_jitter=0.0, affine_prob=0.0)
    assert columns_given(args) == {"label": "kind", "tree_columns": ["a", "b"]}
    assert Recipe(cfg, columns_given(args)).csv_columns() == CsvColumns(label="kind", tree=["a", "b"])
    # flags not given are not in the namespace, so they never override a recipe
    assert set(overrides) == {
        "pretrained",
        "in_chans",
        "sync_bn",
        "num_threads",
        "eval_sizes",
        "train_splits",
        "seed",
        "augment",
    }
