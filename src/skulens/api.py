"""The Python API: the CLI's verbs as methods. Every `skulens` command is a thin wrapper over these.

    from skulens import Run, Catalog

    run = Run.train("data/shop", recipe="recipes/grocery-lite2.toml", out="runs/g", epochs=3)
    run = Run("runs/g")                                  # an existing run folder
    run.evaluate("data/shop", split="test")              # the metrics dict (report in runs/g/eval-test)
    run.predict(["photo.jpg", "photos/"])                # [Prediction, ...]
    run.calibrate(); run.export(int8=True); run.explain("photo.jpg", out="heat.png")
    run.recognizer(engine="onnx")                        # a Recognizer, for serving loops

    with Catalog.open("shop.db", run="runs/g") as catalog:
        catalog.import_("products.csv")
        catalog.search("photo.jpg", top_k=10)

Importing this module is cheap; each method imports what it runs (torch, the engines) when called.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from skulens.errors import SkulensError

__all__ = ["Catalog", "Run", "demo_dataset_path"]  # noqa: F822 - Catalog comes from __getattr__ (lazy)

PREDICT_BATCH = 8  # photos per model call in predict / predict_files (the CLI's batch)
# `skulens demo`'s settings (recipes/demo.toml holds the same; a test keeps them equal).
# the back-off's target: answers at each level right at least this often on val (20 photos: a loose gate)
DEMO_TARGET_PRECISION = 0.9
DEMO_RECIPE = {
    "model": "efficientnet_lite0",
    "epochs": 12,
    "img_size": 160,
    "lr": 1e-3,
    "freeze_stages": 3,
    "catalog_images": True,
    "patience": 0,
}


def __getattr__(name: str):
    if name == "Catalog":  # skulens.catalog.store.Catalog, imported when asked for (sqlalchemy, faiss)
        from skulens.catalog.store import Catalog

        return Catalog
    raise AttributeError(f"module 'skulens.api' has no attribute {name!r}")


def demo_dataset_path() -> Path:
    """The small Grocery Store sample shipped with skulens (8 products: 133 shopper photos, 8 catalog images)."""
    return Path(__file__).parent / "demo_data" / "grocery-mini"


def _is_one_image(images) -> bool:
    from PIL import Image

    return isinstance(images, (str, Path, bytes, bytearray, Image.Image)) or hasattr(images, "read")


def expand_paths(items: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, folders as the image files under them (sorted); an image-less folder is a
    problem ``(folder, message)``. Missing or bad files are left for the reader to report."""
    from skulens.data.images import is_image_file

    paths: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                problems.append((path, f"{path}: no images in this folder"))
            paths.extend(found)
        else:
            paths.append(path)
    return paths, problems


def _names(value: str | list[str] | None) -> list[str] | None:
    """Column names from a list or from comma-separated text."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return [c.strip() for c in items if c.strip()] or None


class Run:
    """A run folder written by :meth:`Run.train` (or `skulens train`), and what can be done with it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.result = None  # the TrainResult, when this object comes from Run.train
        self._recognizers: dict[tuple, Any] = {}
        self._config = None
        self.config  # noqa: B018 - read now: a folder that is not a run fails here, in one line

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self):
        """The run's RunConfig (classes, category tree, preprocessing, metrics, training settings)."""
        if self._config is None:
            from skulens.runs import read_config

            self._config = read_config(self.path)
        return self._config

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    # --- training -------------------------------------------------------------------------------

    @classmethod
    def train(
        cls, dataset, *, out: str | Path, recipe: str | Path | dict | None = None, resume: bool = False, **overrides
    ) -> Run:
        """Train on ``dataset`` (a folder, CSV manifest or Grocery Store root, or an ImageDataset) and
        write the run folder ``out``. ``recipe``: a TOML file (or a dict shaped like one); ``overrides``:
        TrainConfig field names (``epochs=3``), ``augment={...}`` and ``data={...}`` (the [data] table's
        CSV columns), over the recipe. ``resume``: continue the interrupted run in ``out`` with the
        settings it started with. The resolved recipe is written to ``out/recipe.toml``."""
        from skulens.runs import RECIPE_FILE
        from skulens.training.distributed import is_main
        from skulens.training.recipe import resolve
        from skulens.training.trainer import train as fit

        out = Path(out)
        resolved = _resume_recipe(out, recipe, overrides) if resume else resolve(recipe, overrides)
        data = _training_dataset(dataset, resolved)
        try:
            result = fit(resolved.train, data, out, resume=resume)
        finally:  # an interrupted run keeps its recipe too; a resumed one keeps the one it started with
            if is_main() and out.is_dir() and not (resume and (out / RECIPE_FILE).is_file()):
                resolved.write(out / RECIPE_FILE, _recipe_header(out, data))
        run = cls.__new__(cls)  # under torchrun only rank 0 writes config.json: read it when asked
        run.path, run.result, run._recognizers, run._config = out, result, {}, None
        return run

    @classmethod
    def demo(cls, out: str | Path = "runs/demo", epochs: int | None = None, *, say=print) -> Run:
        """Train (``DEMO_RECIPE``; ``epochs``: its own unless given), calibrate the back-off on val,
        evaluate on test and predict a few test photos of the Grocery Store sample shipped with skulens;
        ``say`` prints the story (a run folder that holds an earlier demo is replaced)."""
        import shutil

        from skulens.data.datasets import load_dataset

        out = Path(out)
        if out.exists():
            if not (out / "demo.json").is_file():
                raise SkulensError(f"{out} exists and is not an earlier demo run; choose another --out")
            shutil.rmtree(out)
        data = demo_dataset_path()
        dataset = load_dataset(data)
        say(f"demo: {len(dataset.samples)} Grocery Store photos of {len(dataset.classes)} products ({data})")
        run = cls.train(dataset, out=out, recipe=DEMO_RECIPE, **({} if epochs is None else {"epochs": epochs}))
        (out / "demo.json").write_text(json.dumps({"dataset": str(data)}))
        n = {split: len(dataset.split(split)) for split in ("train", "val", "test")}
        say(
            f"trained {run.result.epochs_run} epochs on {n['train']} photos in {run.result.train_seconds:.0f} s; "
            f"val top-1 {100 * run.result.best_val_acc:.1f}% ({n['val']} photos that also chose the epoch: "
            "a flattering figure)"
        )
        # back-off thresholds chosen on val, so that an unsure answer stops at a coarser category
        run.calibrate(dataset, "val", target_precision=DEMO_TARGET_PRECISION, progress=False)
        _say_demo_test(run.evaluate(dataset, "test"), n["test"], say)
        _say_demo_examples(run, dataset, say)
        say(f"next: skulens predict {out} YOUR_PHOTO.jpg")
        return run

    # --- data -----------------------------------------------------------------------------------

    def dataset(
        self,
        path: str | Path | None = None,
        *,
        image_column: str | None = None,
        label: str | None = None,
        split_column: str | None = None,
        tree_columns: str | list[str] | None = None,
        attribute_columns: str | list[str] | None = None,
        tag_columns: str | list[str] | None = None,
        seed: int | None = None,
        required: bool = True,
    ):
        """The dataset to score or calibrate this run on. ``path`` given: a CSV given without column
        arguments is read with the columns the run was trained with (no repeat of the training flags);
        with any of them, as they say (CsvColumns' defaults for the rest). No ``path``: the run's
        recorded training dataset; when it is not on this machine, an error (``required``) or None.
        ``seed`` (for a seeded split): default the run's own."""
        from skulens.data.datasets import CsvColumns, load_dataset, recorded_columns

        train_args = self.config.train_args
        given = {
            k: v
            for k, v in {
                "image": image_column,
                "label": label,
                "split": split_column,
                "tree": _names(tree_columns),
                "attributes": _names(attribute_columns),
                "tags": _names(tag_columns),
            }.items()
            if v is not None
        }
        columns = CsvColumns(**given) if given else recorded_columns(train_args)
        seed = train_args.get("seed", 0) if seed is None else seed
        if path is not None:
            return load_dataset(path, csv_columns=columns, seed=seed)
        recorded = train_args.get("dataset")
        if not recorded or not Path(recorded).exists():
            if required:
                raise SkulensError(
                    f"{self.path}: its training dataset ({recorded or 'not recorded'}) is not here; pass DATASET"
                )
            return None
        return load_dataset(recorded, csv_columns=columns, seed=seed)

    def _dataset(self, dataset, required: bool = True):
        from skulens.data.datasets import ImageDataset

        return dataset if isinstance(dataset, ImageDataset) else self.dataset(dataset, required=required)

    # --- scoring --------------------------------------------------------------------------------

    def evaluate(
        self,
        dataset=None,
        split: str = "test",
        *,
        tta: bool = False,
        img_size: int | None = None,
        engine: str = "auto",
        device: str = "auto",
        out: str | Path | None = None,
        progress: bool = True,
        choose_sizes: list[int] | None = None,
        choose_flip: bool = False,
    ) -> dict:
        """Top-1/top-5, precision/recall/F1, per class and tree level, back-off, on ``split`` of
        ``dataset`` (path or ImageDataset; None: the run's own); writes ``out`` (default RUN/eval-SPLIT).
        ``choose_sizes`` / ``choose_flip``: pick the input size / flip TTA on val, then score ``split`` once."""
        from skulens.evaluation.report import evaluate_run

        extra: dict = {}
        if choose_sizes:
            extra["choose_sizes"] = list(choose_sizes)
        if choose_flip:
            extra["choose_flip"] = True
        return evaluate_run(
            self.path,
            self._dataset(dataset),
            split,
            tta=tta,
            img_size=img_size,
            device=device,
            engine=engine,
            out_dir=out,
            progress=progress,
            **extra,
        )

    def calibrate(
        self,
        dataset=None,
        split: str = "val",
        *,
        target_precision: float = 0.95,
        unknown_reject_rate: float | None = None,
        tta: bool = False,
        engine: str = "auto",
        device: str = "auto",
        progress: bool = True,
    ) -> dict:
        """Back-off and "unknown" thresholds picked on ``split``; writes RUN/thresholds.json, returns its record."""
        from skulens.evaluation.calibration import calibrate_run

        record = calibrate_run(
            self.path,
            self._dataset(dataset),
            split,
            target_precision=target_precision,
            unknown_reject_rate=unknown_reject_rate,
            tta=tta,
            engine=engine,
            device=device,
            progress=progress,
        )
        self._recognizers.clear()  # they hold the old thresholds
        return record

    def export(
        self,
        int8: bool = False,
        dataset=None,
        *,
        calibration_images: int = 300,
        check_images: int = 500,
        max_top1_drop: float = 1.0,
        calibration_method: str = "minmax",
        int8_only: bool = False,
        int8_weights_only: bool = False,
    ):
        """ONNX (and INT8) export checked against PyTorch on ``dataset``'s images (None: the run's own
        dataset when it is here, else random inputs only); returns the ExportReport. ``int8_only``:
        keep the INT8 file alone (no FP32 file in the run). ``int8_weights_only``: INT8 weights, FP32
        arithmetic (the same answers on a server and in the browser; engines.onnx_export)."""
        from skulens.engines.onnx_export import export_onnx

        report = export_onnx(
            self.path,
            int8=int8,
            dataset=self._dataset(dataset, required=False),
            calibration_images=calibration_images,
            check_images=check_images,
            max_top1_drop_int8=max_top1_drop,
            calibration_method=calibration_method,
            int8_only=int8_only,
            int8_weights_only=int8_weights_only,
        )
        self._recognizers.clear()  # engine "auto" may pick the new export
        return report

    # --- recognising ----------------------------------------------------------------------------

    def recognizer(
        self,
        engine: str = "auto",
        device: str = "auto",
        tta: bool = False,
        threads: int | None = None,
        detector: str | Path | None = None,
    ):
        """A :class:`~skulens.recognition.recognizer.Recognizer` on this run (kept for the next call);
        ``threads``: ONNX Runtime's threads (None: one per core); ``detector``: a product detector's
        folder, for photos of several products."""
        from skulens.recognition.recognizer import Recognizer

        key = (engine, device, tta, threads, str(detector) if detector else None)
        if key not in self._recognizers:
            self._recognizers[key] = Recognizer.load(
                self.path, engine=engine, device=device, tta=tta, threads=threads, detector=detector
            )
        return self._recognizers[key]

    def predict_objects(
        self,
        image,
        detector: str | Path,
        *,
        top_k: int = 5,
        single: bool = False,
        score_threshold: float | None = None,
        engine: str = "auto",
        device: str = "auto",
    ) -> list:
        """Each product in a photo of several: ``ObjectPrediction`` (box in the upright photo's pixels,
        detector score, prediction) per product the detector (`skulens detector train`) finds; nothing
        found: the whole photo. ``single``: only the largest, most central product."""
        recognizer = self.recognizer(engine, device, detector=detector)
        return recognizer.predict_objects(image, top_k, single=single, score_threshold=score_threshold)

    def predict(self, images, *, top_k: int = 5, engine: str = "auto", device: str = "auto", tta: bool = False) -> list:
        """Predictions for images: a path, a folder (its images), bytes, a file object or a PIL image,
        or a list of them. An unusable image raises ImageError (see :meth:`predict_files`)."""
        items = [images] if _is_one_image(images) else list(images)
        expanded: list = []
        for item in items:
            if isinstance(item, (str, Path)) and Path(item).is_dir():
                paths, problems = expand_paths([item])
                if problems:
                    raise SkulensError(problems[0][1])
                expanded.extend(paths)
            else:
                expanded.append(item)
        recognizer = self.recognizer(engine, device, tta)
        predictions: list = []
        for start in range(0, len(expanded), PREDICT_BATCH):
            predictions += recognizer.predict_batch(expanded[start : start + PREDICT_BATCH], top_k=top_k)
        return predictions

    def predict_files(
        self,
        paths: Iterable[str | Path],
        *,
        top_k: int = 5,
        engine: str = "auto",
        device: str = "auto",
        tta: bool = False,
        threads: int | None = None,
        workers: int | None = None,
    ) -> Iterator[tuple[Path, Any, str | None]]:
        """Yield ``(path, Prediction or None, error message or None)`` per image file (folders: their
        images); a bad file, or a folder without images, gives an error and never stops the rest.
        ``workers`` threads decode the next photos while the model runs (None: one per two cores);
        ``threads``: the model's (ONNX Runtime) threads."""
        files, problems = expand_paths(paths)
        for folder, message in problems:
            yield folder, None, message
        if files:
            from skulens.data.pipeline import default_decode_workers, threads_beside

            workers = default_decode_workers() if workers is None else workers
            threads = threads_beside(workers) if threads is None else threads
            recognizer = self.recognizer(engine, device, tta, threads)
            yield from recognizer.predict_files(files, top_k=top_k, batch_size=PREDICT_BATCH, workers=workers)

    def explain(
        self,
        image,
        *,
        out: str | Path | None = None,
        feature_maps: str | Path | None = None,
        class_name: str | int | None = None,
        layers: int = 2,
        device: str = "cpu",
        objects: bool = False,
        detector: str | Path | None = None,
        single: bool = False,
        score_threshold: float | None = None,
    ) -> dict:
        """Grad-CAM for ``image``: the explained and predicted classes with their probabilities; with
        ``out``, the heat map over the photo written there; with ``feature_maps``, the first ``layers``
        layers' feature maps. Returns the record `skulens explain --json` prints.

        ``objects=True`` (with ``detector``, a folder made by `skulens detector train`): each product
        of a photo of several is explained on its own crop, as :meth:`predict_objects` finds them
        (``single``, ``score_threshold`` as there); object N's files get ``_objN`` before their
        suffix. Returns ``{"image", "objects": [record with "object", "box", "score", ...]}``."""
        from skulens.explain.files import explain_to_files

        if objects or detector is not None:
            options = {"out": out, "feature_maps": feature_maps, "class_name": class_name, "layers": layers}
            return self._explain_objects(
                image, detector, device=device, single=single, score_threshold=score_threshold, **options
            )
        if single or score_threshold is not None:
            raise SkulensError("single and score_threshold choose among the products found: they need objects=True")
        return explain_to_files(
            self.path, image, out=out, feature_maps=feature_maps, class_name=class_name, layers=layers, device=device
        )

    def _explain_objects(self, image, detector: str | Path | None, *, device: str, **options) -> dict:
        from skulens.explain.objects import explain_objects_to_files

        if detector is None:
            raise SkulensError("objects=True needs detector=DIR (a folder made by skulens detector train)")
        # PyTorch: Grad-CAM needs its gradients, so the recogniser's own model is the one explained.
        recognizer = self.recognizer("torch", device, detector=detector)
        return explain_objects_to_files(recognizer, image, device=device, **options)


def _say_demo_test(m: dict, n_test: int, say) -> None:
    levels = ", ".join(f"{lv['level']} {100 * lv['accuracy']:.1f}%" for lv in m.get("levels", []))
    say(
        f"test ({n_test} photos the run never saw): top-1 {100 * m['top1']:.1f}%, top-5 {100 * m['top5']:.1f}% "
        f"({levels}); report in {m['out_dir']}"
    )
    point = (m.get("backoff") or {}).get("calibrated")
    if point:
        shares = point["level_shares"]
        coarser = sum(shares[:-1])
        say(
            f"with back-off (calibrated on val): {100 * shares[-1]:.0f}% answered down to the product, "
            f'{100 * coarser:.0f}% at a coarser category, {100 * point["unknown_rate"]:.0f}% "unknown"; '
            f"the answers given are right {100 * (point['accuracy'] or 0):.0f}% of the time"
        )


def _say_demo_examples(run: Run, dataset, say) -> None:
    """Every 4th test photo: the calibrated answer, and whether it is right, backed off or wrong."""
    recognizer = run.recognizer()
    tree, classes = run.config.tree, run.config.classes
    for sample in dataset.split("test")[::4]:
        pred = recognizer.predict(sample.path)
        label = dataset.classes[sample.label]
        truth = list(tree.paths[classes.index(label)]) if tree else [label]
        if pred.unknown:
            answer, verdict = "unknown", "not sure of anything"
        else:
            answer = f"{' > '.join(pred.answer_path)} ({100 * pred.answer_confidence:.0f}%)"
            right = truth[: len(pred.answer_path)] == pred.answer_path
            backed_off = len(pred.answer_path) < len(truth)
            verdict = ("right, " if right else "wrong, ") + ("backed off" if backed_off else "to the product")
        say(f"  {sample.path.name:30s} -> {answer:52s} [{verdict}; it is {label}]")


def _training_dataset(dataset, recipe):
    """The ImageDataset to train on; ``recipe.data`` becomes the CSV columns it was read with."""
    from skulens.data.datasets import ImageDataset, load_dataset
    from skulens.training.recipe import CSV_FIELDS

    if not isinstance(dataset, ImageDataset):
        dataset = load_dataset(dataset, csv_columns=recipe.csv_columns(), seed=recipe.train.seed)
    if dataset.csv_columns:
        recipe.data = {key: dataset.csv_columns[name] for key, name in CSV_FIELDS.items()}
    return dataset


def _resume_recipe(out: Path, recipe, overrides: dict):
    """The settings the interrupted run in ``out`` started with (its train_state.json), the CSV
    columns as given, else as its recipe.toml says; only ``progress`` may change."""
    from skulens.runs import RECIPE_FILE, TRAIN_STATE_FILE
    from skulens.training.config import TrainConfig
    from skulens.training.recipe import Recipe, check_recipe, merge, read_recipe

    state = out / TRAIN_STATE_FILE
    if not state.is_file():
        raise SkulensError(f"{out}: nothing to resume (no {TRAIN_STATE_FILE})")
    try:
        config = TrainConfig.from_dict(json.loads(state.read_text(encoding="utf-8"))["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SkulensError(f"{state}: unreadable resume state ({exc})") from None
    config.progress = overrides.get("progress", True)
    own = read_recipe(out / RECIPE_FILE).get("data", {}) if (out / RECIPE_FILE).is_file() else {}
    given = merge(
        read_recipe(recipe) if isinstance(recipe, (str, Path)) else check_recipe(recipe or {}), check_recipe(overrides)
    ).get("data", {})
    return Recipe(config, {**own, **given})


def _recipe_header(out: Path, dataset) -> str:
    from skulens import __version__

    source = dataset.source or dataset.root
    return (
        f"The resolved recipe of {out} (skulens {__version__}): every setting, defaults included.\n"
        f"Trained on {source}. To train it again:\n"
        f"  skulens train {source} --config {out / 'recipe.toml'} --out NEW_RUN"
    )


def _catalog_records(source: Path, columns: dict, tree_columns, attribute_columns, seed: int):
    """The records `skulens report` draws a catalog from: a products CSV or a dataset folder."""
    from skulens.analytics.records import records_from_csv, records_from_dataset
    from skulens.data.datasets import load_dataset

    if source.suffix.lower() == ".csv":
        return records_from_csv(
            source,
            label=columns["label"],
            tree_columns=_names(tree_columns),
            image_column=columns["image_column"],
            attributes=_names(attribute_columns),
            skip_columns=[columns["split_column"] or "split"],
        )
    return records_from_dataset(load_dataset(source, seed=seed))


def _recognition_logs(logs: list[Path]) -> tuple[list, list[str]]:
    """The recognitions of every log, and a note for each log with unreadable lines (left out)."""
    import logging

    from skulens.analytics.records import read_recognitions

    recognitions, notes = [], []
    for path in logs:
        records, problems = read_recognitions(path)
        recognitions += records
        if problems:
            notes.append(f"{path}: {len(problems)} line(s) left out ({problems[0]}).")
            logging.getLogger("skulens").warning(
                "warning: %s: %d line(s) left out, e.g. %s", path, len(problems), problems[0]
            )
    return recognitions, notes


def report(
    source: str | Path,
    out: str | Path,
    *,
    predictions: str | Path | None = None,
    label: str = "label",
    image_column: str = "image",
    split_column: str | None = "split",
    tree_columns: str | list[str] | None = None,
    attribute_columns: str | list[str] | None = None,
    title: str | None = None,
    colour_sample: int = 500,
    period: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Catalog analytics (`skulens report`): categories, attributes, colours and what shoppers photograph,
    as ``out/index.html`` with PNG charts and CSV tables. ``source``: a dataset folder, a products CSV
    (``label``, ``tree_columns``, ``attribute_columns``: default the columns with few distinct values)
    or a recognitions log (.jsonl); ``predictions``: another log to report. Returns the summary."""
    from skulens.analytics.report import build_report

    source = Path(source)
    is_log = source.suffix.lower() in (".jsonl", ".ndjson")
    logs = ([source] if is_log else []) + ([Path(predictions)] if predictions else [])
    catalog = None
    if not is_log:
        columns = {"label": label, "image_column": image_column, "split_column": split_column}
        catalog = _catalog_records(source, columns, tree_columns, attribute_columns, seed)
    recognitions, notes = _recognition_logs(logs)
    return build_report(
        out,
        products=catalog.records if catalog else None,
        recognitions=recognitions,
        level_names=catalog.level_names if catalog else None,
        attribute_names=catalog.attribute_names if catalog else None,
        title=title,
        source=", ".join(([catalog.source] if catalog else []) + [str(p) for p in logs]),
        colour_sample=colour_sample,
        period=period,
        seed=seed,
        progress=progress,
        notes=notes,
        unit="images" if catalog and source.is_dir() else "products",
    )
