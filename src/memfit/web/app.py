"""The HTTP API and the page: a thin shell over ``memfit.infer``/``train``/``fit_*``/``params``.

Endpoints (all JSON; OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET  /api/models``    the catalog (``memfit models --json``)
* ``GET  /api/gpus``      the accelerators (``memfit gpus --json``)
* ``GET  /api/options``   every option of both modes, from the dataclass metadata (the page's
  form is built from it)
* ``POST /api/params``    ``{model}`` -> ``ParamsResult.to_dict()``
* ``POST /api/infer``     ``{model, options}`` -> ``Estimate.to_dict()``
* ``POST /api/train``     ``{model, options}`` -> ``Estimate.to_dict()``
* ``POST /api/fit``       ``{model, mode, gpu, gpus, options}`` -> ``FitResult.to_dict()``
* ``POST /api/verdicts``  ``{model, mode, gpus: [names], options}`` -> one fit verdict per GPU
* ``POST /api/check``     ``{text, model?, gpu?, gpus?, dp?}`` -> ``memfit check --json`` on a
  pasted command line or config (:mod:`memfit.web.check_api`)

Bad input is HTTP 422 with ``{"detail": [{"loc", "msg", "input", "allowed", "type"}]}``,
whether pydantic or memfit's own checks (:class:`~memfit.errors.MemfitError`) found it.

Safety: the server never reads its own files for a ``model`` (a path-like string is refused
unless the operator passes ``allow_paths``), never fetches from the Hub (``hf:`` names are
refused unless ``allow_hub``), never runs model code (memfit's estimates are arithmetic on
``config.json`` fields), limits the request body (1 MiB, read within ``body_timeout_s``), and
bounds the cost of a request: models of at most ``max_layers`` layers (checked on the parsed
model, whatever the JSON number type), fit sweeps over at most ``max_fit_gpus`` GPUs, each
computation in a worker process (:mod:`memfit.web.workers`) stopped past
``request_timeout_s`` or when its client leaves (503), at most ``max_concurrent`` at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import MemfitError
from .schemas import (
    COMMON_GPUS,
    MODES,
    OPTION_CLASSES,
    FitRequest,
    InferRequest,
    ParamsRequest,
    TrainRequest,
    VerdictsRequest,
    describe_options,
    option_field,
)
from .workers import JobFailed, WorkerPool

__all__ = ["WebSettings", "create_app", "serve"]

log = logging.getLogger("memfit.web")

#: Default cap on a request body: a config.json is a few KiB; the largest real ones ~100 KiB.
MAX_BODY_BYTES = 1 << 20
#: Default cap on the layers of an inline config (real models have at most a few hundred;
#: the estimate's cost grows with the layer count).
MAX_LAYERS = 512
#: Default cap on ``gpus`` in one fit sweep (a training sweep tries every DP x TP x PP x CP
#: factorization of it, times the ZeRO/FSDP, checkpointing and offload choices).
MAX_FIT_GPUS = 64

# What a catalog name looks like; anything else (slashes, dots in front, .json) is a path.
_CATALOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_PATH_SUFFIXES = (".json", ".gguf", ".safetensors", ".bin")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class WebSettings:
    """What the operator allows; the defaults are the safe ones."""

    allow_paths: bool = False
    """Accept a ``model`` that is a path on the server (a config.json or a folder)."""
    allow_hub: bool = False
    """Accept ``hf:org/name`` models (fetching config.json from the Hugging Face Hub)."""
    max_body_bytes: int = MAX_BODY_BYTES
    max_layers: int = MAX_LAYERS
    max_fit_gpus: int = MAX_FIT_GPUS
    max_concurrent: int = 2
    """Worker processes: estimates and fit sweeps computed at once; others wait up to
    ``busy_timeout_s``. 0 computes in the request's thread, with no deadline (tests)."""
    busy_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    """A computation still running after this is stopped (its worker killed): 503."""
    body_timeout_s: float = 10.0
    """A request body not fully received by then is refused (408): a client that sends its
    headers and stalls holds no worker."""
    worker_memory_bytes: int = 2 << 30
    """Address space of one worker process (``RLIMIT_AS``)."""


# ---------------------------------------------------------------------------------------
# Errors: everything the user got wrong is a 422 naming the field, the value, what is allowed
# ---------------------------------------------------------------------------------------

class _Unprocessable(Exception):
    """A MemfitError placed in the request (its ``loc``), raised to the 422 handler."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        self.detail = detail
        super().__init__(detail)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: an odd value as its repr, NaN and infinities (which
    strict JSON has no words for) as ``'nan'``, ``'inf'``, ``'-inf'``."""
    try:
        return _finite(jsonable_encoder(value))
    except Exception:  # noqa: BLE001 - an odd (or deeply nested) value is shown as its repr
        import reprlib

        return reprlib.repr(value)  # bounded depth and length


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class _Where:
    """Where a request's parts live, to place a MemfitError's field in the body."""

    mode: str | None
    top: tuple[str, ...]


def _loc(field: str | None, where: _Where) -> list[Any]:
    if not field:
        return ["body"]
    key = field.replace("-", "_")
    if key in where.top:
        return ["body", key]
    if where.mode and option_field(where.mode, key) is not None:
        return ["body", "options", key]
    if key == "model":
        return ["body", "model"]
    return ["body", "model", field]  # a config.json field (model_type, num_layers, ...)


def _memfit_detail(exc: MemfitError, where: _Where) -> list[dict[str, Any]]:
    return [{"type": "memfit_error", "loc": _loc(exc.field, where), "msg": str(exc),
             "input": _jsonable(exc.value), "allowed": exc.allowed}]


def _validation_allowed(loc: list[Any], mode: str | None, err: Mapping[str, Any],
                        settings: WebSettings) -> str:
    """What would have been accepted at ``loc`` (from the option metadata where it is one)."""
    if len(loc) >= 3 and loc[:2] == ["body", "options"]:
        f = option_field(mode or "", loc[2]) if mode else None
        if f is not None:
            return _option_allowed(mode or "", f)
        if err.get("type") == "extra_forbidden" and mode:
            names = [g.name for g in fields(OPTION_CLASSES[mode])]
            return "one of " + ", ".join(names)
    if loc[:2] == ["body", "mode"] or err.get("type") == "union_tag_invalid":
        return ", ".join(MODES)
    if loc[:2] == ["body", "model"]:
        return "a catalog name (see GET /api/models) or a config.json object"
    if loc[:2] == ["body", "gpu"] or (len(loc) >= 2 and loc[:2] == ["body", "gpus"]
                                      and len(loc) == 3):
        return "a GPU name (see GET /api/gpus)"
    if loc[:2] == ["body", "gpus"]:
        return f"an integer in [1, {settings.max_fit_gpus}]"
    if err.get("type") in ("json_invalid", "model_attributes_type", "dict_type") or loc == [
            "body"]:
        return "a JSON object"
    ctx = err.get("ctx") or {}
    return str(ctx.get("expected") or err.get("msg", ""))


def _option_allowed(mode: str, f: Any) -> str:
    from .schemas import allowed_text

    return allowed_text(OPTION_CLASSES[mode], f)


def _clean_validation_errors(errors: list[Any], path: str,
                             settings: WebSettings) -> list[dict[str, Any]]:
    """pydantic's errors with the union tags taken out of ``loc`` and ``allowed`` added."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    path_mode = {"/api/infer": "infer", "/api/train": "train"}.get(path)
    for err in errors:
        loc = list(err.get("loc", ()))
        mode = path_mode
        if len(loc) > 1 and loc[0] == "body" and loc[1] in MODES and path_mode is None:
            mode = loc.pop(1)  # the discriminated union's tag (fit, verdicts)
        if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            tag = (err.get("ctx") or {}).get("tag")
            loc = ["body", "mode"]  # the discriminator itself was wrong or missing
            err = {**err, "input": tag}
        if len(loc) == 3 and loc[:2] == ["body", "model"] and err.get("type") in (
                "string_type", "dict_type"):
            loc = ["body", "model"]  # one error for "neither a name nor an object"
            err = {**err, "type": "model_type",
                   "msg": "model must be a catalog name (a string) or a config.json object"}
        key = (tuple(loc), err.get("type"))
        if key in seen:
            continue
        seen.add(key)
        out.append({"type": err.get("type"), "loc": loc, "msg": err.get("msg"),
                    "input": _jsonable(err.get("input")),
                    "allowed": _validation_allowed(loc, mode, err, settings)})
    return out


# ---------------------------------------------------------------------------------------
# Cost and body limits
# ---------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, whether the client
    declared the length or streams it, and bodies not received within ``timeout_s`` with 408
    (the body is read here, at most ``max_bytes`` of it, then handed on)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def _refuse(self, send: Send, status: int = 413) -> None:
        if status == 408:
            body = (b'{"detail":[{"type":"body_timeout","loc":["body"],"msg":"request body not '
                    b'received in time","input":null,"allowed":"a body sent within %d s"}]}'
                    % int(self.timeout_s))
        else:
            body = (b'{"detail":[{"type":"body_too_large","loc":["body"],"msg":"request body '
                    b'too large","input":null,"allowed":"at most %d bytes"}]}' % self.max_bytes)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await self._refuse(send, 408)
                return
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    """ASGI middleware: ``nosniff``, ``no-referrer`` on every response, ``no-store`` on the
    API's. (Pure ASGI, unlike ``@app.middleware``, whose wrapped ``receive`` hides a client's
    disconnect from the endpoint.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        if scope.get("path", "").startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheck:
    """ASGI middleware: answer only requests whose Host is one of ``hosts`` (a page bound to
    127.0.0.1 must not answer a DNS-rebound foreign name)."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = ""
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1").lower()
                    break
            hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if hostname not in self.hosts:
                body = b'{"detail":"invalid Host header"}'
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _check_cost(model: Any, settings: WebSettings) -> None:
    """Refuse a model whose estimate costs more than this server allows, judged on the parsed
    model (so ``"num_hidden_layers": 100000.0`` or a nested ``text_config`` cannot slip by)."""
    from ..catalog import resolve_model

    try:
        spec, _ = resolve_model(model)
    except MemfitError as exc:  # the generic path (transformers, seconds a trace) is not served
        if exc.field != "model_type" or not isinstance(exc.value, str):
            raise
        from ..arch import FAMILIES

        raise MemfitError(
            f"model_type: got {exc.value!r}; allowed on this server: "
            + ", ".join(sorted(FAMILIES)) + " (other types transformers knows are counted and "
            "traced by the CLI and Python API, `memfit params/infer/train`, which take "
            "seconds per answer; see docs/architectures.md)", field="model_type",
            value=exc.value, allowed="a model_type memfit models analytically") from None
    if spec.num_layers > settings.max_layers:
        raise MemfitError.bad_value("num_hidden_layers", spec.num_layers,
                                    f"at most {settings.max_layers} layers on this server")


def _model_argument(model: str | dict[str, Any], settings: WebSettings) -> Any:
    """What to hand to memfit for the request's ``model``, never touching the server's files
    unless the operator allowed it.

    A catalog name becomes its catalog config (so a file of the same name in the server's
    working directory is never read); an inline object is checked for its size; ``hf:``
    names and paths are refused unless enabled.
    """
    if isinstance(model, dict):
        _check_cost(model, settings)
        return model
    text = model.strip()
    if text.lower().startswith("hf:"):
        if not settings.allow_hub:
            raise MemfitError(
                f"model: got {model!r}; this server does not fetch from the Hugging Face Hub; "
                "allowed: a catalog name or an inline config.json object (the operator "
                "enables hf: names with `memfit serve --allow-hub`)", field="model",
                value=model, allowed="a catalog name or an inline config.json object")
        _check_cost(text, settings)
        return text
    looks_like_path = (not _CATALOG_NAME.match(text)) or text.lower().endswith(_PATH_SUFFIXES)
    if looks_like_path:
        if not settings.allow_paths:
            raise MemfitError(
                f"model: got {model!r}, which looks like a path; this server does not read "
                "its own files; allowed: a catalog name or an inline config.json object (the "
                "operator enables paths with `memfit serve --allow-paths`)", field="model",
                value=model, allowed="a catalog name or an inline config.json object")
        _check_cost(text, settings)
        return text
    from ..catalog import get_entry

    entry = get_entry(text)  # unknown names: MemfitError with close matches
    return {**entry.config, "_name_or_path": entry.name}


# ---------------------------------------------------------------------------------------
# Data the page needs
# ---------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _models() -> list[dict[str, Any]]:
    from ..catalog import all_entries
    from ..memory.params import count_params

    rows = []
    for e in all_entries():
        c = count_params(e.spec)
        rows.append({"name": e.name, "family": e.family, "total_params": c.total,
                     "active_params": c.active, "hf_id": e.hf_id, "source": e.source})
    return rows


def _gpus() -> list[dict[str, Any]]:
    from ..hardware import GPUS

    return [{"name": g.name, "vendor": g.vendor, "memory_bytes": g.memory_bytes,
             "usable_bytes": g.usable_bytes, "marketed": g.marketed,
             "memory_basis": g.memory_basis, "aliases": list(g.aliases)} for g in GPUS]


def _suggestions() -> dict[str, list[str]]:
    """Values the page offers for the free-text options (the server still validates)."""
    from ..dtypes import DTYPES, FORMAT_NAMES, GGUF_FILE_TYPES

    try:
        from ..memory.kv_cache import _GGML_KV
        ggml_kv = [t.lower() for t in _GGML_KV if t not in ("F32", "BF16")]
    except ImportError:  # pragma: no cover - the list is a hint only
        ggml_kv = []
    kv = [d for d in DTYPES if d not in ("int4", "tf32")] + ["fp8"] + ggml_kv
    return {"weights": list(FORMAT_NAMES) + [t.name for t in GGUF_FILE_TYPES],
            "kv_dtype": list(dict.fromkeys(kv))}


def _options_description(settings: WebSettings) -> dict[str, Any]:
    return {
        "modes": list(MODES),
        "infer": describe_options(OPTION_CLASSES["infer"]),
        "train": describe_options(OPTION_CLASSES["train"]),
        "suggestions": _suggestions(),
        "common_gpus": list(COMMON_GPUS),
        "default_gpu": COMMON_GPUS[0],
        "limits": {"max_body_bytes": settings.max_body_bytes,
                   "max_layers": settings.max_layers, "max_fit_gpus": settings.max_fit_gpus},
        "server": {"allow_paths": settings.allow_paths, "allow_hub": settings.allow_hub,
                   "version": __version__},
    }


def _given(options: Any) -> dict[str, Any]:
    """The options the request set (the others keep the dataclass defaults)."""
    return dict(options.model_dump(exclude_unset=True))


def _static_text(name: str) -> str:
    static = resources.files(__package__).joinpath("static")
    return static.joinpath(name).read_text(encoding="utf-8")


_PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
             "form-action 'none'")


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# The computations (run in a worker process: module-level, their arguments plain data)
# ---------------------------------------------------------------------------------------

def _job(kind: str, args: dict[str, Any], settings: WebSettings) -> dict[str, Any]:
    """One request's computation: ``params``, ``infer``, ``train``, ``fit`` or ``verdicts``."""
    if kind == "params":
        from ..api import params

        return params(_model_argument(args["model"], settings)).to_dict()
    if kind in ("infer", "train"):
        return _estimate(kind, _model_argument(args["model"], settings), args["options"])
    if kind == "fit":
        return _fit(args, settings)
    if kind == "verdicts":
        from ..hardware import get_gpu

        model = _model_argument(args["model"], settings)
        rows = []
        for gpu in args["gpus"]:
            e = _estimate(args["mode"], model, {**args["options"], "gpu": gpu})
            rows.append({"gpu": gpu, "marketed": get_gpu(gpu).marketed,
                         "gpu_memory_bytes": e["gpu_memory_bytes"], "fits": e["fits"],
                         "peak_bytes": e["peak_bytes"], "total_bytes": e["total_bytes"],
                         "headroom_bytes": e["headroom_bytes"]})
        return {"mode": args["mode"], "verdicts": rows}
    raise AssertionError(kind)


def _estimate(mode: str, model: Any, opts: dict[str, Any]) -> dict[str, Any]:
    if mode == "infer":
        from ..inference import infer as run
    else:
        from ..training import train as run  # type: ignore[assignment]
    return run(model, **opts).to_dict()


def _fit(args: dict[str, Any], settings: WebSettings) -> dict[str, Any]:
    model = _model_argument(args["model"], settings)
    opts, gpus, limit = args["options"], args["gpus"], settings.max_fit_gpus
    if args["mode"] == "infer":
        from ..inference import fit_infer

        if gpus is not None and gpus > limit:
            raise MemfitError.bad_value("gpus", gpus, f"an integer in [1, {limit}] on this "
                                        "server")
        return fit_infer(model, gpu=args["gpu"], gpus=gpus, **opts).to_dict()
    from ..training import fit_train

    n = gpus
    if n is None:
        n = 1
        for k in ("dp", "tp", "pp", "cp"):
            n *= int(opts.get(k, 1))
    if n > limit:
        raise MemfitError.bad_value("gpus", n, f"an integer in [1, {limit}] on this server "
                                    "(gpus, or dp x tp x pp x cp)")
    return fit_train(model, gpu=args["gpu"], gpus=n, **opts).to_dict()


_Compute = Callable[[Request, _Where, str, dict[str, Any]], Awaitable[Any]]


def _make_compute(pool: WorkerPool, settings: WebSettings) -> _Compute:
    """The coroutine that runs one job in a worker of ``pool``."""

    async def compute(request: Request, where: _Where, kind: str, args: dict[str, Any]) -> Any:
        """Run one job in a worker under the deadline, placing a MemfitError in the request."""
        try:
            return await pool.run(_job, (kind, args, settings),
                                  timeout_s=settings.request_timeout_s,
                                  busy_timeout_s=settings.busy_timeout_s,
                                  gone=request.is_disconnected)
        except MemfitError as exc:
            raise _Unprocessable(_memfit_detail(exc, where)) from None
        except JobFailed as exc:
            if exc.kind == "crashed":
                log.error("memfit web: %s failed: %s", kind, exc)
            allowed = ("retry later" if exc.kind == "busy" else "a smaller request (fewer "
                       "layers, GPUs or sweep points)")
            raise _Unprocessable([{"type": exc.kind, "loc": ["body"], "msg": str(exc),
                                   "input": None, "allowed": allowed}]) from None

    return compute


def _register_error_handlers(app: FastAPI, settings: WebSettings) -> None:
    """Every error answered as 422 with field, value and what is allowed (503/500 for a
    busy, late or crashed worker)."""

    @app.exception_handler(_Unprocessable)
    async def _unprocessable(request: Request, exc: _Unprocessable) -> JSONResponse:
        kind = str(exc.detail[0]["type"]) if exc.detail else ""
        status = {"busy": 503, "timeout": 503, "gone": 503, "crashed": 500}.get(kind, 422)
        return JSONResponse({"detail": exc.detail}, status_code=status)

    @app.exception_handler(MemfitError)
    async def _memfit_error(request: Request, exc: MemfitError) -> JSONResponse:
        detail = _memfit_detail(exc, _Where(None, ()))
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        # FastAPI answers a body its JSON parser gave up on (too deeply nested: the parser
        # recurses once per level) with a bare 400; it is bad input like any other.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse({"detail": [{
                "type": "json_invalid", "loc": ["body"],
                "msg": "the body could not be parsed as JSON (nested too deeply?)",
                "input": None, "allowed": "a JSON object"}]}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _clean_validation_errors(list(exc.errors()), request.url.path, settings)
        return JSONResponse({"detail": detail}, status_code=422)


def _register_page(app: FastAPI) -> None:
    """The page and its static files."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"),
                            headers={"Content-Security-Policy": _PAGE_CSP,
                                     "X-Frame-Options": "DENY"})

    app.mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static")


def _register_catalog(app: FastAPI, settings: WebSettings) -> None:
    """GET /api/models, /api/models/{name}, /api/gpus and /api/options."""

    @app.get("/api/models", tags=["catalog"], summary="The catalog of models")
    def models() -> list[dict[str, Any]]:
        """``memfit models --json``: name, family, total/active parameters, source."""
        return _models()

    @app.get("/api/models/{name}", tags=["catalog"], summary="One catalog model and its "
             "config.json")
    def model_entry(name: str) -> dict[str, Any]:
        """The catalog entry called ``name`` with its upstream ``config.json`` fields (the page
        starts a pasted config from it)."""
        from ..catalog import get_entry

        def run() -> dict[str, Any]:
            if not _CATALOG_NAME.match(name):
                raise MemfitError.bad_value("model", name, "a catalog name")
            e = get_entry(name)
            row = next(r for r in _models() if r["name"] == e.name)
            return {**row, "published_params": e.published_params, "notes": e.notes,
                    "config": dict(e.config)}

        try:
            return run()
        except MemfitError as exc:
            detail = _memfit_detail(exc, _Where(None, ()))
            detail[0]["loc"] = ["path", "name"]
            raise _Unprocessable(detail) from None

    @app.get("/api/gpus", tags=["catalog"], summary="The catalog of GPUs")
    def gpus() -> list[dict[str, Any]]:
        """``memfit gpus --json``: total and usable bytes per device, with aliases."""
        return _gpus()

    @app.get("/api/options", tags=["catalog"], summary="Every option, for building a form")
    def options() -> dict[str, Any]:
        """Each option of both modes from the dataclass metadata: name, CLI flag, kind,
        default, help, choices, bounds, what is allowed; plus hints and the server's limits."""
        return _options_description(settings)


def _register_estimates(app: FastAPI, compute: _Compute) -> None:
    """POST /api/params, /api/infer and /api/train."""

    @app.post("/api/params", tags=["estimate"], summary="Exact parameter counts")
    async def params_endpoint(body: ParamsRequest, request: Request) -> dict[str, Any]:
        """``memfit params MODEL --json``."""
        return await compute(request, _Where(None, ("model",)), "params", {"model": body.model})

    @app.post("/api/infer", tags=["estimate"], summary="Memory per GPU for inference")
    async def infer_endpoint(body: InferRequest, request: Request) -> dict[str, Any]:
        """``memfit infer MODEL [options] --json``: the contract's JSON."""
        return await compute(request, _Where("infer", ("model",)), "infer",
                             {"model": body.model, "options": _given(body.options)})

    @app.post("/api/train", tags=["estimate"], summary="Memory per GPU for one training step")
    async def train_endpoint(body: TrainRequest, request: Request) -> dict[str, Any]:
        """``memfit train MODEL [options] --json``: the contract's JSON."""
        return await compute(request, _Where("train", ("model",)), "train",
                             {"model": body.model, "options": _given(body.options)})


def _register_fit(app: FastAPI, compute: _Compute) -> None:
    """POST /api/fit and /api/verdicts."""

    @app.post("/api/fit", tags=["fit"], summary="Largest batch, longest context, fewest GPUs, "
              "layouts")
    async def fit_endpoint(body: FitRequest, request: Request) -> dict[str, Any]:
        """``memfit fit MODEL infer|train --gpu G [--gpus N] [options] --json``."""
        where = _Where(body.mode, ("model", "mode", "gpu", "gpus"))
        return await compute(request, where, "fit", {
            "model": body.model, "mode": body.mode, "gpu": body.gpu, "gpus": body.gpus,
            "options": _given(body.options)})

    @app.post("/api/verdicts", tags=["fit"], summary="Does the scenario fit each of these GPUs?")
    async def verdicts_endpoint(body: VerdictsRequest, request: Request) -> dict[str, Any]:
        """The scenario's estimate on each GPU of ``gpus`` (default: a row of common ones):
        ``fits``, ``total_bytes``, ``headroom_bytes`` per GPU."""
        from ..hardware import get_gpu

        cards = []
        for i, name in enumerate(body.gpus):
            try:
                cards.append(get_gpu(name).name)
            except MemfitError as exc:
                detail = _memfit_detail(exc, _Where(body.mode, ()))
                detail[0]["loc"] = ["body", "gpus", i]
                raise _Unprocessable(detail) from None
        return await compute(request, _Where(body.mode, ("model", "mode")), "verdicts", {
            "model": body.model, "mode": body.mode, "gpus": list(dict.fromkeys(cards)),
            "options": _given(body.options)})


def create_app(settings: WebSettings | None = None, *,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The FastAPI app. ``allowed_hosts``: answer only these Host names (``serve`` sets the
    loopback names when bound to a loopback address)."""
    settings = settings or WebSettings()
    pool = WorkerPool(settings.max_concurrent, max_bytes=settings.worker_memory_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio

        await anyio.to_thread.run_sync(pool.warm)  # the workers start with the server
        yield
        pool.close()

    app = FastAPI(
        lifespan=lifespan,
        title="memfit",
        version=__version__,
        summary="How much GPU memory a transformer needs, for inference and training, exactly.",
        description="The same options as the `memfit` command line (generated from one "
                    "definition). Errors are 422 with the field (`loc`), the value (`input`) "
                    "and what is `allowed`.",
    )

    compute = _make_compute(pool, settings)
    _register_error_handlers(app, settings)
    _register_page(app)
    _register_catalog(app, settings)
    _register_estimates(app, compute)
    _register_fit(app, compute)
    from .check_api import register as register_check

    register_check(app, settings, pool)  # POST /api/check: a pasted command line or config
    app.add_middleware(SecurityHeaders)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, hosts=tuple(allowed_hosts))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8000, *, allow_paths: bool = False,
          allow_hub: bool = False, log_level: str = "info") -> None:
    """Run the page and the API with uvicorn until interrupted (``memfit serve``).

    Binds to the loopback address by default; on a loopback address it also refuses requests
    whose Host header is not a loopback name (DNS rebinding).
    """
    import uvicorn

    settings = WebSettings(allow_paths=allow_paths, allow_hub=allow_hub)
    hosts = None
    if _is_loopback(host):
        hosts = ("127.0.0.1", "localhost", "[::1]", host.lower())
    else:
        log.warning("memfit serve: listening on %s, reachable from other machines", host)
    app = create_app(settings, allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                limit_concurrency=64, timeout_keep_alive=5)
