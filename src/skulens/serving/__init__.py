"""The HTTP service: ``create_app(ServeConfig(...))`` builds the FastAPI app; ``skulens serve`` runs it."""

from skulens.serving.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(config: ServeConfig):
    # Imported lazily so `import skulens.serving` stays cheap for the CLI's argument parsing.
    from skulens.serving.app import create_app as _create_app

    return _create_app(config)
