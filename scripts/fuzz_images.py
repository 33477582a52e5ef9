"""Coverage-guided fuzzing of the image decoder (``skulens.data.images.load_image``) with atheris.

Every input must end in an 8-bit RGB image or an ImageError: any other exception, a hang (-timeout)
or a memory blow-up (-rss_limit_mb) is a finding, which libFuzzer saves as ``crash-*``/``timeout-*``/
``oom-*`` in the current folder. The seed corpus is tests/hostile_corpus.py (valid files of every
format, truncated, corrupted, bombs, polyglots), written to a temp folder; each decoded image is also
preprocessed for a model, as the API does.

    pip install atheris                                   # in the dev extra
    python scripts/fuzz_images.py                         # 5 minutes (default bound)
    python scripts/fuzz_images.py -max_total_time=60      # any libFuzzer flag
    python scripts/fuzz_images.py -runs=20000 crashes/    # a run count, and a folder for new inputs

It ends by itself: without -runs or -max_total_time it adds -max_total_time=300.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["PIL", "skulens.data"]):
    from skulens.data.images import load_image
    from skulens.data.transforms import Preprocessing, to_model_input

from skulens.errors import ImageError  # noqa: E402

# The server's limits (serving/config.py), so a finding is one the API would hit too.
MAX_PIXELS = 40_000_000
MAX_BYTES = 10 * 1024 * 1024
PRE = Preprocessing(img_size=64, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


def test_one_input(data: bytes) -> None:
    try:
        img = load_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES, draft_size=PRE.img_size)
    except ImageError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"an error message of several lines: {exc!r}") from None
        return
    if img.mode != "RGB" or min(img.size) < 1:
        raise AssertionError(f"load_image returned {img.mode} {img.size}")
    tensor = to_model_input(img, PRE)
    if tuple(tensor.shape) != (3, PRE.img_size, PRE.img_size):
        raise AssertionError(f"model input of shape {tuple(tensor.shape)}")
    load_image(img)  # the server hands decoded photos on; a second pass must not fail


def seed_folder() -> Path:
    from tests.hostile_corpus import build_corpus

    folder = Path(tempfile.mkdtemp(prefix="skulens-fuzz-seeds-"))
    for case in build_corpus():
        if 0 < len(case.data) <= 1_000_000:  # libFuzzer's default -max_len is derived from the seeds
            (folder / case.filename).write_bytes(case.data)
    return folder


def main() -> None:
    args = list(sys.argv)
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in args[1:]):
        args.append("-max_total_time=300")
    for flag, value in (("-timeout=", "10"), ("-rss_limit_mb=", "3072"), ("-max_len=", "262144")):
        if not any(a.startswith(flag) for a in args[1:]):
            args.append(flag + value)
    folders = [a for a in args[1:] if not a.startswith("-")]
    args = [a for a in args if a not in folders] + folders + [str(seed_folder())]
    # Pillow warns about every corrupt tag it skips: noise here, the findings are exceptions.
    warnings.simplefilter("ignore")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
