"""``POST /api/check``: the page's "Check a command or config" (``memfit check`` on pasted text).

``{"text", "model"?, "gpu"?, "gpus"?, "dp"?}`` -> :func:`memfit.check.check_text`'s JSON (the
equivalent ``memfit infer|train`` estimate plus ``understood``, ``ignored`` and ``artefact``).
The work runs in the server's worker pool under its deadline, like the other estimates.

Safety, as for ``model`` elsewhere: the model the artefact names (``vllm serve ORG/NAME``,
``base_model:``, ``-m model.gguf``) or the one given beside it must be a catalog name, a
catalog model's Hugging Face id; a path on the server or a Hub
fetch is refused (422 on ``model``) unless the operator allowed it. Files a pasted config
refers to (``deepspeed: ds.json``) are never read: ``check_text`` lists them as ignored.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import MemfitError

__all__ = ["CheckRequest", "MAX_TEXT_CHARS", "register"]

#: As ``memfit check FILE``'s cap: configs and command lines are kilobytes.
MAX_TEXT_CHARS = 1 << 20
_TOP = ("model", "gpu", "gpus", "dp")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class CheckRequest(BaseModel):
    """A pasted command line or config file, and what it does not say."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="a command line (vllm serve ..., llama-server ...) or a "
                                  "config file's text (DeepSpeed JSON, axolotl YAML, ...)")
    model: str | None = Field(None, description="the model, when the artefact names none (a "
                                                "DeepSpeed JSON): a catalog name or HF id")
    gpu: str | None = Field(None, description="the GPU (memfit's --gpu)")
    gpus: int | None = Field(None, ge=1, description="a training run's world size")
    dp: int | None = Field(None, ge=1, description="the data-parallel degree")


def _artefact_model(text: str) -> Any:
    """The model the pasted artefact names (read as :func:`memfit.check.check_text` reads it,
    with no folder to open referenced files from), or None."""
    from ..check import PROGRAMS, read_command, read_text

    first = text.strip().split()[0]
    if os.path.basename(first) in PROGRAMS or _ASSIGN.match(first):
        t = read_command(shlex.split(re.sub(r"\\\r?\n", " ", text), comments=True))
    else:
        t = read_text(text, "pasted")
    return t.model


def _safe_model(model: Any, settings: Any) -> Any:
    """``model`` unchanged if this server may resolve it; else the MemfitError of
    :func:`memfit.web.app._model_argument` (paths and Hub names need the operator's leave)."""
    from ..catalog import find_hf_id
    from .app import _CATALOG_NAME, _PATH_SUFFIXES, _model_argument

    if model is None or isinstance(model, dict):
        return model
    text = str(model).strip()
    if not os.path.exists(os.path.expanduser(text)) or settings.allow_paths:
        if find_hf_id(text) is not None:
            return model  # a catalog model's Hugging Face id: resolved to the catalog
        if _CATALOG_NAME.match(text) and not text.lower().endswith(_PATH_SUFFIXES):
            return model  # a catalog name (unknown ones: MemfitError with close matches)
    return _model_argument(text, settings)


def check_job(text: str, beside: dict[str, Any], settings: Any) -> dict[str, Any]:
    """One check (in a worker process): the model is vetted first, then ``check_text``."""
    from ..check import check_text

    if not isinstance(text, str) or not text.strip():
        raise MemfitError.bad_value("artefact", text, "a command line or a config file's text")
    model = beside.get("model")
    _safe_model(model if model is not None else _artefact_model(text), settings)
    return check_text(text, **beside)


def _loc(field: str | None) -> list[Any]:
    if field in _TOP:
        return ["body", field]
    if not field or field in ("artefact", "command", "file"):
        return ["body", "text"]
    return ["body", "text", field]  # a field of the pasted artefact


def register(app: FastAPI, settings: Any, pool: Any) -> None:
    """Add ``POST /api/check`` to ``app``, its jobs run by ``pool`` (a WorkerPool)."""
    from .app import _jsonable, _Unprocessable
    from .workers import JobFailed

    def unprocessable(exc: MemfitError) -> _Unprocessable:
        return _Unprocessable([{"type": "memfit_error", "loc": _loc(exc.field),
                                "msg": str(exc), "input": _jsonable(exc.value),
                                "allowed": exc.allowed}])

    @app.post("/api/check", tags=["estimate"], summary="Check a pasted command line or config")
    async def check_endpoint(body: CheckRequest, request: Request) -> dict[str, Any]:
        """``memfit check --json`` on pasted text: the equivalent estimate plus
        ``understood``, ``ignored`` and ``artefact``."""
        if len(body.text) > MAX_TEXT_CHARS:
            raise unprocessable(MemfitError.bad_value(
                "artefact", f"{len(body.text):,} characters", f"at most {MAX_TEXT_CHARS:,}"))
        beside = {k: getattr(body, k) for k in _TOP if getattr(body, k) is not None}
        try:
            return await pool.run(check_job, (body.text, beside, settings),
                                  timeout_s=settings.request_timeout_s,
                                  busy_timeout_s=settings.busy_timeout_s,
                                  gone=request.is_disconnected)
        except MemfitError as exc:
            raise unprocessable(exc) from None
        except JobFailed as exc:
            allowed = "retry later" if exc.kind == "busy" else "a smaller artefact"
            raise _Unprocessable([{"type": exc.kind, "loc": ["body"], "msg": str(exc),
                                   "input": None, "allowed": allowed}]) from None
