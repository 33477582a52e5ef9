"""skulens: product image recognition for e-commerce.

Pipeline layout: ``data`` (datasets, images, transforms) -> ``models`` (registry,
backbones) -> ``training`` -> ``evaluation`` -> ``recognition`` (the Recognizer API).
"""

__version__ = "0.1.0"

from skulens.errors import SkulensError  # noqa: E402


def __getattr__(name):
    # Lazy so that `import skulens` stays cheap (no torch import) for the CLI's --help.
    if name == "Recognizer":
        from skulens.recognition.recognizer import Recognizer

        return Recognizer
    raise AttributeError(name)


__all__ = ["Recognizer", "SkulensError", "__version__"]
