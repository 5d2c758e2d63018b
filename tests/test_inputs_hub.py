"""``hf:org/name[@revision]`` against a fake Hub on 127.0.0.1 (no test touches the network).

The fake serves what ``huggingface_hub`` asks of ``/{repo}/resolve/{revision}/{file}``: HEAD
with ``X-Repo-Commit`` and ``ETag``, GET with ``Range`` (206), and the Hub's ``X-Error-Code``
answers (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound). Every request is logged,
so the tests can check that no weights are downloaded: only ranged reads of the headers.
Skipped where ``huggingface_hub`` is not installed (CI installs the ``hub`` extra).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from memfit.errors import MemfitError
from memfit.inputs import load
from memfit.inputs.hub import parse_hub_id, read_hub
from memfit.memory.params import count_params

from .test_inputs import LLAMA, llama_tensors, write_safetensors

hf = pytest.importorskip("huggingface_hub")
pytest.importorskip("huggingface_hub.constants")  # a lazy package: load the submodule

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_fake_token_for_tests"


class FakeHub:
    """Repositories: repo_id -> {"files": {name: bytes}, "gated": bool, "revisions": set}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []

    def add(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> None:
        self.repos[repo_id] = {"files": files, "gated": gated, "revisions": {"main", "v1", COMMIT}}

    def requests_for(self, filename: str) -> list[tuple[str, dict[str, str]]]:
        return [(m, h) for m, p, h in self.log if p.endswith("/" + filename)]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _reply(self, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)) if not head or status >= 400
                             else headers.get("X-Size", str(len(body))))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, head: bool) -> None:
            headers = {"X-Error-Code": code} if code else {}
            headers["X-Error-Message"] = code or "not found"
            headers["X-Repo-Commit"] = COMMIT
            self._reply(status, headers, b'{"error": "' + (code or "x").encode() + b'"}', head)

        def _serve(self, head: bool) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            hub.log.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            m = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", path)
            if not m:
                return self._error(404, None, head)
            repo = hub.repos.get(m["repo"])
            if repo is None:
                return self._error(401, "RepoNotFound", head)
            if repo["gated"] and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._error(403, "GatedRepo", head)
            if m["rev"] not in repo["revisions"]:
                return self._error(404, "RevisionNotFound", head)
            data = repo["files"].get(m["file"])
            if data is None:
                return self._error(404, "EntryNotFound", head)
            headers = {"X-Repo-Commit": COMMIT,
                       "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                       "Accept-Ranges": "bytes"}
            rng = self.headers.get("Range")
            if rng and not head:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._reply(206, headers, data[start:end + 1], head)
            headers["X-Size"] = str(len(data))
            return self._reply(200, headers, b"" if head else data, head)

    return Handler


@pytest.fixture()
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MEMFIT_CACHE", str(tmp_path / "memfit"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # A process started with these settings: huggingface_hub reads them at import. (Not
    # constants.ENDPOINT: its URL template was built at import, and memfit passes the
    # endpoint explicitly, which hf_hub_url swaps in for the default one.)
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf.constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(hf.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "tokens"))
    hub.endpoint = endpoint  # type: ignore[attr-defined]
    # No test touches the network: resolving any other host fails at once.
    import socket

    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1", b"localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"tests resolve no host ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield hub
    server.shutdown()
    server.server_close()


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)


def st_bytes(tmp_path: Path, tensors: Any, name: str = "x.safetensors") -> bytes:
    path = tmp_path / name
    write_safetensors(path, tensors, {"format": "pt"})
    return path.read_bytes()


def llama_repo(tmp_path: Path, shards: int = 1, **config: Any) -> dict[str, bytes]:
    cfg = dict(LLAMA, **config)
    tensors = llama_tensors(cfg, lm_head=not cfg.get("tie_word_embeddings"))
    files = {"config.json": json.dumps(cfg).encode(),
             "generation_config.json": b'{"max_new_tokens": 32}'}
    if shards == 1:
        files["model.safetensors"] = st_bytes(tmp_path, tensors)
        return files
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        files[fname] = st_bytes(tmp_path, part, fname)
        weight_map.update(dict.fromkeys(part, fname))
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    return files


def assert_no_weights_downloaded(hub: FakeHub) -> None:
    for method, path, headers in hub.log:
        if path.endswith(".safetensors") and method == "GET":
            assert "range" in headers, path  # header reads only, never the whole file
            start, _, end = headers["range"].removeprefix("bytes=").partition("-")
            assert int(start) <= 8 and int(end) <= 100_000


def test_parse_hub_id() -> None:
    assert parse_hub_id("hf:Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert parse_hub_id("hf:org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for bad in ("hf:name", "hf:org/name/extra", "hf:org/name@", "hf:../x", "hf:org/na me"):
        with pytest.raises(MemfitError, match="allowed: hf:org/name"):
            parse_hub_id(bad)


def test_single_file_repo_reads_config_and_header_only(fake_hub: FakeHub, tmp_path: Path
                                                       ) -> None:
    fake_hub.add("org/tiny", llama_repo(tmp_path))
    spec, config, info = load("hf:org/tiny")
    assert spec.name == "org/tiny" and config["_generation_config"] == {"max_new_tokens": 32}
    assert info is not None
    assert info.total_params == count_params(spec).total
    assert info.source.startswith(f"hf:org/tiny@{COMMIT[:12]}")
    assert not any("parameter count" in n for n in info.notes)
    assert_no_weights_downloaded(fake_hub)
    assert [m for m, _ in fake_hub.requests_for("model.safetensors")] == ["GET"]
    # the headers of that commit are cached: a second read needs no range request
    fake_hub.log.clear()
    _, _, again = load("hf:org/tiny")
    assert again is not None and again.weight_bytes == info.weight_bytes
    assert not fake_hub.requests_for("model.safetensors")
    assert any("memfit's cache" in n for n in again.notes)


def test_sharded_repo_and_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add("org/sharded", llama_repo(tmp_path, shards=2))
    spec, _, info = load("hf:org/sharded@v1")
    assert info is not None and info.total_params == count_params(spec).total
    assert "2 shards" in info.source
    assert {t.file for t in info.tensors} == {"model-00001-of-00002.safetensors",
                                              "model-00002-of-00002.safetensors"}
    assert_no_weights_downloaded(fake_hub)
    paths = [p for _, p, _ in fake_hub.log]
    assert "/org/sharded/resolve/v1/config.json" in paths
    assert all(f"/resolve/{COMMIT}/" in p for p in paths if p.endswith(".safetensors"))


def test_tied_repo_note(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add("org/tied", llama_repo(tmp_path, tie_word_embeddings=True))
    spec, _, info = load("hf:org/tied")
    assert info is not None and spec.tie_word_embeddings
    assert any(n.startswith("tied weights stored once") for n in info.notes)


def test_repo_without_safetensors_has_no_weights_info(fake_hub: FakeHub) -> None:
    fake_hub.add("org/bin", {"config.json": json.dumps(LLAMA).encode(),
                             "pytorch_model.bin": b"\0" * 10})
    spec, config, info = load("hf:org/bin")
    assert info is None and spec.num_layers == 2 and "_generation_config" not in config


@pytest.mark.parametrize("model,match", [
    ("hf:org/absent", "is not a model repository on http://127.0.0.1"),
    ("hf:org/tiny@nope", "has no revision 'nope'"),
    ("hf:org/noconfig", "has no config.json"),
    ("hf:org/gated", "is a gated repository: accept its terms .* set HF_TOKEN"),
])
def test_hub_errors_are_one_line(fake_hub: FakeHub, tmp_path: Path, model: str,
                                 match: str) -> None:
    fake_hub.add("org/tiny", llama_repo(tmp_path))
    fake_hub.add("org/noconfig", {"model.gguf": b"GGUF"})
    fake_hub.add("org/gated", llama_repo(tmp_path), gated=True)
    with pytest.raises(MemfitError, match=match) as err:
        load(model)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"model: {model}")


def test_gated_repo_with_token(fake_hub: FakeHub, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add("org/gated", llama_repo(tmp_path), gated=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _, _, info = load("hf:org/gated")
    assert info is not None and info.total_params > 0
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in fake_hub.log)


def test_offline_reads_the_caches(fake_hub: FakeHub, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add("org/tiny", llama_repo(tmp_path))
    _, _, online = load("hf:org/tiny")
    assert online is not None
    go_offline(monkeypatch)
    fake_hub.log.clear()
    # config from the Hugging Face cache, headers from memfit's cache
    spec, config, info = load("hf:org/tiny")
    assert info is not None and info.weight_bytes == online.weight_bytes
    assert config["_generation_config"] == {"max_new_tokens": 32}
    assert fake_hub.log == []
    # without memfit's header cache: the config alone
    monkeypatch.setenv("MEMFIT_CACHE", str(tmp_path / "empty"))
    spec, config, info = load("hf:org/tiny")
    assert info is None and spec.num_layers == 2
    # a model never fetched: a cache miss, one line
    with pytest.raises(MemfitError, match="not in the local cache .* HF_HUB_OFFLINE"):
        load("hf:org/other")
    assert fake_hub.log == []


def test_offline_reads_safetensors_files_in_the_hf_cache(fake_hub: FakeHub, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    fake_hub.add("org/sharded", llama_repo(tmp_path, shards=2))
    for f in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
              "model-00002-of-00002.safetensors"):  # a model downloaded before
        hf.hf_hub_download("org/sharded", f, endpoint=fake_hub.endpoint)  # type: ignore[attr-defined]
    go_offline(monkeypatch)
    fake_hub.log.clear()
    spec, _, info = load("hf:org/sharded")
    assert info is not None and info.total_params == count_params(spec).total
    assert any("offline: read the headers of the safetensors files" in n for n in info.notes)
    assert fake_hub.log == []


def test_unreachable_hub_falls_back_on_the_cache(fake_hub: FakeHub, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add("org/tiny", llama_repo(tmp_path))
    _, _, online = load("hf:org/tiny")
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    monkeypatch.setenv("HF_ENDPOINT", dead)
    # huggingface_hub retries a HEAD with no cached answer 5 times, with backoff: skip the waits
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    _, _, info = load("hf:org/tiny")
    assert info is not None and online is not None and info.weight_bytes == online.weight_bytes
    with pytest.raises(MemfitError, match="could not be fetched from http://127.0.0.1:9"):
        load("hf:org/never")


def test_missing_hub_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MemfitError, match=r"needs the 'hub' extra \(in a memfit clone: pip "
                       r"install -e \"\.\[hub\]\""):
        read_hub("hf:org/name")


def test_a_hub_that_never_answers_fails_fast_in_one_line(fake_hub: FakeHub, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An endpoint that accepts connections and never answers: one probe with a short
    timeout, then the caches (huggingface_hub alone would retry for minutes)."""
    import socket
    import time

    fake_hub.add("org/tiny", llama_repo(tmp_path))
    _, _, online = load("hf:org/tiny")  # now in the caches
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("MEMFIT_HUB_TIMEOUT", "0.5")
        monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("a retry slept"))
        start = time.perf_counter()
        _, _, info = load("hf:org/tiny")
        assert info is not None and online is not None
        assert info.weight_bytes == online.weight_bytes
        start = time.perf_counter()
        with pytest.raises(MemfitError, match=r"could not be fetched from http://127\.0\.0\.1:"
                           r"\d+ \(no answer within 0\.5 s") as err:
            load("hf:org/never")
        assert time.perf_counter() - start < 3
        assert "\n" not in str(err.value)
    finally:
        silent.close()
