"""memfit's web page and HTTP API (the ``web`` extra: FastAPI and uvicorn).

``memfit serve [--host 127.0.0.1] [--port 8000]`` calls :func:`serve`; tests and other ASGI
servers use :func:`create_app`. Importing this package is cheap; FastAPI is imported on
first use, and its absence is a :class:`~memfit.errors.MemfitError` naming the extra.
"""

from __future__ import annotations

from typing import Any

from ..errors import MemfitError

__all__ = ["create_app", "serve"]

_MISSING = ("serve: needs the 'web' extra (in a memfit clone: pip install -e \".[web]\"): "
            "{exc}")


def _app_module() -> Any:
    try:
        from . import app
    except ImportError as exc:
        raise MemfitError(_MISSING.format(exc=exc), field="web", value=None,
                          allowed="the 'web' extra installed (fastapi, uvicorn)") from None
    return app


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI application (see :func:`memfit.web.app.create_app`)."""
    return _app_module().create_app(*args, **kwargs)


def serve(host: str = "127.0.0.1", port: int = 8000, *, allow_paths: bool = False,
          allow_hub: bool = False, log_level: str = "info") -> None:
    """Serve the page and the API on ``host:port`` until interrupted.

    ``allow_paths``: accept ``model`` strings that are paths on this machine;
    ``allow_hub``: accept ``hf:`` models (both off by default: the server reads no files of
    its own and fetches nothing).
    """
    _app_module().serve(host, port, allow_paths=allow_paths, allow_hub=allow_hub,
                        log_level=log_level)
