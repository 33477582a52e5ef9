"""skulens: product image recognition for e-commerce.

    from skulens import Run, Catalog, Recognizer

    run = Run.train("data/shop", recipe="recipes/grocery-lite2.toml", out="runs/g", epochs=3)
    run.evaluate(split="test"); run.predict(["photo.jpg"])

``Run`` and ``Catalog`` are the CLI's verbs as Python (skulens.api); ``Recognizer`` predicts in a
loop. See ARCHITECTURE.md for the layers.
"""

__version__ = "0.1.0"

from skulens.errors import SkulensError  # noqa: E402

_LAZY = {"Run": "skulens.api", "Catalog": "skulens.catalog.store", "Recognizer": "skulens.recognition.recognizer"}


def __getattr__(name):
    # Lazy so that `import skulens` stays cheap (no torch import) for the CLI's --help.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skulens' has no attribute {name!r}")


__all__ = ["Catalog", "Recognizer", "Run", "SkulensError", "__version__"]
