"""Hugging Face Hub models, ``hf:org/name[@revision]``: the config and the safetensors headers.

Needs the ``hub`` extra (``pip install -e ".[hub]"`` in a memfit clone: ``huggingface_hub``).
Reads, and never downloads weights:

1. ``config.json`` (and ``generation_config.json`` when the repository has one) with
   ``hf_hub_download``, into the usual Hugging Face cache; the revision is resolved to a
   commit there, and every later read is pinned to that commit;
2. the safetensors headers, with ``HfApi.parse_safetensors_file_metadata`` (HTTP range reads
   of each file's first bytes, what ``get_safetensors_metadata`` does per file) after the
   ``model.safetensors.index.json`` names the shards (or ``model.safetensors`` alone).

The headers of a commit never change, so they are kept in memfit's cache
(``$MEMFIT_CACHE``, else ``$XDG_CACHE_HOME/memfit``, else ``~/.cache/memfit``) as one small
JSON file per commit, and read from there next time.

Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable), the config comes from the Hugging
Face cache, and the headers from memfit's cache or from safetensors files already in the
Hugging Face cache (a model downloaded before); without either, the result has no weights
info (``None``) and estimates come from the config alone. A cache miss for the config is an
error. ``HF_TOKEN`` (or the token ``hf auth login`` saved) opens gated and private models.
``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read at call time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import MemfitError
from . import WeightsInfo
from .safetensors import HeaderEntry, parse_header, read_header, weights_from_headers

__all__ = ["HUB_PREFIX", "parse_hub_id", "read_hub", "header_cache_dir"]

HUB_PREFIX = "hf:"
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# Hub repository ids: "org/name", letters, digits, '-', '_', '.' (huggingface_hub
# validate_repo_id), at most 96 characters.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_ALLOWED = "hf:org/name or hf:org/name@revision (a Hub model id, a branch, tag or commit)"


def parse_hub_id(model: str) -> tuple[str, str | None]:
    """``"hf:Qwen/Qwen2.5-0.5B@main"`` -> ``("Qwen/Qwen2.5-0.5B", "main")``."""
    text = model.strip()
    if text.startswith(HUB_PREFIX):
        text = text[len(HUB_PREFIX):]
    repo_id, at, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or (at and not revision.strip()):
        raise MemfitError.bad_value("model", model, _ALLOWED)
    return repo_id, revision.strip() or None


def _import_hub(model: str) -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (a lazy package: load the submodules)
        import huggingface_hub.utils  # noqa: F401
    except ImportError:
        raise MemfitError(f"model: {model} needs the 'hub' extra (in a memfit clone: pip "
                          "install -e \".[hub]\", which installs huggingface_hub)", field="model",
                          value=model, allowed="the 'hub' extra installed (huggingface_hub)"
                          ) from None
    try:
        import huggingface_hub.errors  # noqa: F401  (0.23+; older versions keep them in utils)
    except ImportError:
        pass
    if not hasattr(huggingface_hub.HfApi, "parse_safetensors_file_metadata"):
        raise MemfitError(f"model: {model} needs huggingface_hub>=0.25 (found "
                          f"{huggingface_hub.__version__}); pip install -U huggingface_hub",
                          field="model", value=model, allowed="huggingface_hub>=0.25")
    return huggingface_hub


def _error_class(hf: Any, name: str) -> type[BaseException]:
    for module in ("errors", "utils"):
        cls = getattr(getattr(hf, module, None), name, None)
        if isinstance(cls, type):
            return cls
    return type(name, (Exception,), {})  # never raised: matches nothing


def _env_true(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _offline(hf: Any) -> bool:
    env = _env_true("HF_HUB_OFFLINE")
    if env is None:
        env = _env_true("TRANSFORMERS_OFFLINE")
    return bool(hf.constants.HF_HUB_OFFLINE) if env is None else env


def _hub_cache(hf: Any) -> str:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return str(hf.constants.HF_HUB_CACHE)


def header_cache_dir() -> Path:
    """Where memfit keeps the safetensors headers it fetched, one JSON file per commit."""
    if os.environ.get("MEMFIT_CACHE"):
        return Path(os.environ["MEMFIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "memfit"


#: Seconds the Hub has to answer one probe before memfit reads the local caches instead
#: (``MEMFIT_HUB_TIMEOUT`` overrides). huggingface_hub would otherwise retry a failed HEAD 5
#: times with backoff, then again with a 60 s timeout: 25 s with no network, minutes against
#: an endpoint that never answers.
HUB_PROBE_TIMEOUT_S = 3.0


def _probe_timeout() -> float:
    try:
        value = float(os.environ.get("MEMFIT_HUB_TIMEOUT", HUB_PROBE_TIMEOUT_S))
    except ValueError:
        return HUB_PROBE_TIMEOUT_S
    return value if 0 < value <= 600 else HUB_PROBE_TIMEOUT_S


def _unreachable(url: str, timeout: float, headers: dict[str, str]) -> str | None:
    """Why ``url`` gets no HTTP answer within ``timeout`` seconds (one HEAD, no retry, no
    redirect followed, the environment's proxies honoured), or None when it answers (any
    status: the Hub's own errors come later, from huggingface_hub)."""
    import urllib.error
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, headers=headers, method="HEAD"),
                         timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # an HTTP answer: the Hub is there
    except Exception as exc:  # DNS, refused, timeout, TLS: no answer
        reason = getattr(exc, "reason", None) or exc
        return f"{type(reason).__name__}: {str(reason)[:120]}" if str(reason) else \
            type(reason).__name__


def _headers_path(repo_id: str, commit: str) -> Path:
    return header_cache_dir() / "hub" / repo_id.replace("/", "--") / f"{commit}.json"


class _Hub:
    """One ``hf:`` read: the settings of this call and the error mapping."""

    def __init__(self, model: str) -> None:
        self.hf = _import_hub(model)
        self.label = model.strip() if model.strip().startswith(HUB_PREFIX) else HUB_PREFIX + model
        self.repo_id, self.revision = parse_hub_id(model)
        self.offline = _offline(self.hf)
        self.endpoint = (os.environ.get("HF_ENDPOINT") or self.hf.constants.ENDPOINT).rstrip("/")
        self.cache_dir = _hub_cache(self.hf)
        self.token = os.environ.get("HF_TOKEN") or None  # None: the token `hf auth login` saved
        self.unreachable: str | None = None  # why the Hub did not answer the probe
        if not self.offline:
            url = f"{self.endpoint}/{self.repo_id}/resolve/{self.revision or 'main'}/config.json"
            timeout = _probe_timeout()
            try:  # the token huggingface_hub would send (HF_TOKEN or the saved one)
                token = self.token or self.hf.get_token()
            except Exception:  # noqa: BLE001 - a token problem shows in the real request
                token = None
            headers = {"authorization": f"Bearer {token}"} if token else {}
            why = _unreachable(url, timeout, headers)
            if why is not None:  # read the caches instead, as HF_HUB_OFFLINE=1 would
                self.unreachable = f"no answer within {timeout:g} s ({why})"
                self.offline = True

    def is_missing(self, exc: BaseException) -> bool:
        """The Hub says the file does not exist (not: a cache miss, a network error)."""
        hf = self.hf
        return (isinstance(exc, (_error_class(hf, "EntryNotFoundError"),
                                 _error_class(hf, "RemoteEntryNotFoundError")))
                and not isinstance(exc, _error_class(hf, "LocalEntryNotFoundError")))

    def download(self, filename: str, revision: str | None) -> str:
        if self.unreachable:  # the cache alone, without huggingface_hub's network calls
            path = self.hf.try_to_load_from_cache(self.repo_id, filename,
                                                  cache_dir=self.cache_dir, revision=revision)
            if isinstance(path, str):
                return path
            raise _error_class(self.hf, "LocalEntryNotFoundError")(
                f"{filename} is not in the local cache")
        return self.hf.hf_hub_download(
            self.repo_id, filename, revision=revision, cache_dir=self.cache_dir,
            endpoint=self.endpoint, token=self.token, local_files_only=self.offline)

    def error(self, exc: BaseException) -> MemfitError:
        """One line naming the model, what went wrong and what would do."""
        hf, label = self.hf, self.label
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, _error_class(hf, "GatedRepoError")):
            why = ("is a gated repository: accept its terms on its Hub page and set HF_TOKEN "
                   "to a token with access")
        elif isinstance(exc, _error_class(hf, "RepositoryNotFoundError")):
            why = (f"is not a model repository on {self.endpoint} (check the id; a private "
                   "repository needs HF_TOKEN)")
        elif isinstance(exc, _error_class(hf, "RevisionNotFoundError")):
            why = f"has no revision {self.revision!r} (a branch, tag or commit)"
        elif isinstance(exc, _error_class(hf, "LocalEntryNotFoundError")) or isinstance(
                exc, _error_class(hf, "OfflineModeIsEnabled")):
            if self.unreachable:
                why = (f"could not be fetched from {self.endpoint} ({self.unreachable}) and is "
                       f"not in the local cache ({self.cache_dir})")
            elif self.offline:
                why = (f"is not in the local cache ({self.cache_dir}) and HF_HUB_OFFLINE is "
                       "set: run once online, or unset HF_HUB_OFFLINE")
            else:
                why = (f"could not be fetched from {self.endpoint} and is not in the local "
                       f"cache ({self.cache_dir}): {first}")
        elif self.is_missing(exc):
            why = ("has no config.json (a GGUF-only repository: download the .gguf file and "
                   "pass its path)")
        elif isinstance(exc, _error_class(hf, "HfHubHTTPError")):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"could not be read: the Hub answered {status or 'an error'} ({first})"
        else:
            why = f"could not be read from {self.endpoint}: {type(exc).__name__}: {first}"
        return MemfitError(f"model: {label} {why}", field="model", value=label,
                           allowed=_ALLOWED)


def read_hub(model: str) -> tuple[dict[str, Any], WeightsInfo | None, str]:
    """``hf:org/name[@revision]`` -> ``(config, weights or None, repo_id)``.

    ``config`` is the repository's ``config.json`` (``generation_config.json``, when there
    is one, under the key ``_generation_config``); ``weights`` comes from the safetensors
    headers (None when the repository has no safetensors weights, or offline without
    cached headers).
    """
    hub = _Hub(model)
    try:
        config_path = hub.download("config.json", hub.revision)
    except Exception as exc:  # huggingface_hub's and the HTTP client's errors, mapped
        raise hub.error(exc) from None
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise MemfitError.bad_value("model", hub.label, f"a repository whose config.json is "
                                                         f"valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise MemfitError.bad_value("model", hub.label, "a config.json holding a JSON object")
    # hf_hub_download returns <cache>/models--org--name/snapshots/<commit>/config.json.
    commit = Path(config_path).parent.name
    if not re.fullmatch(r"[0-9a-f]{40}", commit):  # not a snapshot folder: keep the revision
        commit = hub.revision or "main"
    try:
        gen = json.loads(Path(hub.download("generation_config.json", commit)).read_text(
            encoding="utf-8"))
        if isinstance(gen, dict):
            config["_generation_config"] = gen
    except Exception:  # absent, or offline and not cached: the config alone will do
        pass
    info = _weights(hub, commit, config)
    return config, info, hub.repo_id


def _weights(hub: _Hub, commit: str, config: dict[str, Any]) -> WeightsInfo | None:
    """Headers from memfit's cache, else the Hub (online), else cached safetensors files."""
    source = f"{hub.label.split('@')[0]}@{commit[:12]}"
    cached = _load_cached_headers(hub.repo_id, commit)
    if cached is not None:
        return _info(cached, config, source, ["safetensors headers from memfit's cache"])
    if not hub.offline:
        try:
            headers = _fetch_headers(hub, commit)
        except MemfitError:
            raise
        except Exception as exc:  # the Hub unreachable mid-way: fall back on the cache
            files = _cached_files(hub, commit)
            if files is None:
                raise hub.error(exc) from None
            return _info(files, config, source, ["read the headers of the safetensors files "
                                                  "in the local cache (the Hub did not answer)"])
        if headers is None:
            return None
        _store_cached_headers(hub.repo_id, commit, headers)
        return _info(headers, config, source, [])
    files = _cached_files(hub, commit)
    if files is None:
        return None
    why = f"the Hub at {hub.endpoint} gave {hub.unreachable}" if hub.unreachable else "offline"
    return _info(files, config, source,
                 [f"{why}: read the headers of the safetensors files in the local cache"])


def _info(headers: dict[str, dict[str, Any]], config: dict[str, Any], source: str,
          notes: list[str]) -> WeightsInfo:
    entries: list[HeaderEntry] = []
    for filename, header in sorted(headers.items()):
        entries.extend(parse_header(header, filename)[0])
    what = f"{len(headers)} shards" if len(headers) > 1 else next(iter(headers))
    return weights_from_headers(entries, config, source=f"{source} ({what})", notes=notes)


def _fetch_headers(hub: _Hub, commit: str) -> dict[str, dict[str, Any]] | None:
    """{filename: header JSON object} from the Hub, or None without safetensors weights."""
    try:
        index_path = hub.download(_INDEX, commit)
    except Exception as exc:
        if not hub.is_missing(exc):
            raise
        files = [_SINGLE]
    else:
        try:
            index = json.loads(Path(index_path).read_text(encoding="utf-8"))
            files = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise MemfitError.bad_value("model", hub.label, f"a repository whose {_INDEX} has "
                                                             f"a weight_map ({exc})") from None
    api = hub.hf.HfApi(endpoint=hub.endpoint, token=hub.token)
    out: dict[str, dict[str, Any]] = {}
    for filename in files:
        try:
            meta = api.parse_safetensors_file_metadata(hub.repo_id, filename, revision=commit,
                                                       token=hub.token)
        except Exception as exc:
            if filename == _SINGLE and hub.is_missing(exc):
                return None  # no safetensors weights (e.g. pytorch_model.bin only)
            raise
        header: dict[str, Any] = {name: {"dtype": t.dtype, "shape": list(t.shape),
                                         "data_offsets": list(t.data_offsets)}
                                  for name, t in meta.tensors.items()}
        if meta.metadata:
            header["__metadata__"] = dict(meta.metadata)
        out[filename] = header
    return out


def _cached_files(hub: _Hub, commit: str) -> dict[str, dict[str, Any]] | None:
    """Headers of safetensors files already in the Hugging Face cache (all shards), else
    None."""
    def cached(filename: str) -> str | None:
        path = hub.hf.try_to_load_from_cache(hub.repo_id, filename, cache_dir=hub.cache_dir,
                                             revision=commit)
        return path if isinstance(path, str) else None

    index = cached(_INDEX)
    if index is not None:
        try:
            files = sorted(set(json.loads(Path(index).read_text(encoding="utf-8"))
                               ["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return None
    else:
        files = [_SINGLE]
    paths = {f: cached(f) for f in files}
    if any(p is None for p in paths.values()):
        return None
    out = {}
    for filename, path in paths.items():
        entries, meta = read_header(path)  # type: ignore[arg-type]
        out[filename] = _header_dict(entries, meta)
    return out


def _header_dict(entries: list[HeaderEntry], meta: dict[str, str]) -> dict[str, Any]:
    """Header entries back to a header object (offsets re-laid, sizes exact)."""
    out: dict[str, Any] = {}
    pos = 0
    for e in entries:
        out[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [pos,
                                                                                  pos + e.nbytes]}
        pos += e.nbytes
    if meta:
        out["__metadata__"] = meta
    return out


def _load_cached_headers(repo_id: str, commit: str) -> dict[str, dict[str, Any]] | None:
    path = _headers_path(repo_id, commit)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data["files"]


def _store_cached_headers(repo_id: str, commit: str, headers: dict[str, dict[str, Any]]) -> None:
    path = _headers_path(repo_id, commit)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"repo_id": repo_id, "commit": commit, "files": headers}),
                       encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a cache: a read-only home only costs a refetch
