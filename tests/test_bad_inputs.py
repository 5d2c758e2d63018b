"""Every bad input gets a clear answer, through each of the three doors.

The corpus is data: ``tests/bad_inputs/cases.json``, one case per bad input, each naming the
``field`` its error must name. A case runs through every door it does not opt out of:

* the CLI (``memfit.cli.main`` in-process): exit status 2 and exactly one line on stderr,
  ``memfit: error: FIELD ...; allowed: ...``, never a traceback;
* the Python API: :class:`memfit.MemfitError` (a ``ValueError``) and nothing else, its message
  naming the field and what is allowed;
* the HTTP API (FastAPI's TestClient; skipped without the ``web`` extra): 422 (or the case's
  ``http_status``) with ``detail`` items carrying ``loc``, ``msg``, ``input`` and ``allowed``.

Case schema (all keys but ``name`` and ``field`` optional):

``mode``
    ``infer``, ``train``, ``params``, ``fit-infer`` or ``fit-train``: which call the CLI
    argv, the Python call and the HTTP request are derived from.
``model``
    the MODEL string (``{tmp}`` is the case's temporary folder).
``config``
    a config.json object: written to ``{tmp}/config.json`` for the CLI, passed as a dict to
    the Python API and inline to the HTTP API (``model`` then defaults to that file).
``files``
    ``{relative path: content}`` written under ``{tmp}`` first; content is text,
    ``{"hex": ...}`` (bytes), ``{"dir": true}`` or ``{"symlink": target}``.
``options``, ``gpu``, ``gpus``
    the scenario's options (Python names; CLI flags ``--name-with-dashes``, a true flag given
    alone) and, for fit, the GPU and GPU count.
``cli``, ``python``, ``http``
    ``false`` to skip that door; ``cli`` may be an explicit argv and ``http`` an explicit
    request ``{"method", "path", "json" | "body" | "body_hex"}``.
``value``
    a text the CLI and Python messages must contain (the value given).
``http_status``, ``http_field``
    when the HTTP answer differs (413 for an oversized body) or names the field differently.

Anywhere in a case, ``{"$float": "nan"}`` is a float JSON cannot spell, ``{"$repeat": [text,
n]}`` is ``text * n`` and ``{"$join": [parts]}`` joins decoded parts.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

import memfit
from memfit import MemfitError
from memfit.cli import main

CASES_FILE = Path(__file__).parent / "bad_inputs" / "cases.json"
MODES = ("infer", "train", "params", "fit-infer", "fit-train")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        if set(value) == {"$repeat"}:
            text, n = value["$repeat"]
            return text * n
        if set(value) == {"$join"}:
            return "".join(_decode(v) for v in value["$join"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _load() -> list[dict[str, Any]]:
    cases = [_decode(c) for c in json.loads(CASES_FILE.read_text(encoding="utf-8"))["cases"]]
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    for c in cases:
        assert c.get("mode") in MODES + (None,), c["name"]
        assert c.get("field"), c["name"]
    return cases


CASES = _load()


def _cases(door: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in CASES if c.get(door) is not False
            and (c.get("mode") is not None or isinstance(c.get(door), (list, dict)))]


def _norm(text: Any) -> str:
    return str(text).lower().replace("-", "_")


def _sub(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_sub(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v, tmp) for k, v in value.items()}
    return value


def _prepare(case: dict[str, Any], tmp: Path) -> None:
    """Write the case's files (and its config) under ``tmp``."""
    for rel, content in (case.get("files") or {}).items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/") or (isinstance(content, dict) and content.get("dir")):
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, dict) and "symlink" in content:
            path.symlink_to(content["symlink"])
        elif isinstance(content, dict) and "hex" in content:
            path.write_bytes(bytes.fromhex(content["hex"]))
        else:
            path.write_bytes(content.encode("utf-8"))
    if "config" in case:
        # json.dumps spells NaN and Infinity as JavaScript does; Python's json reads them
        (tmp / "config.json").write_text(json.dumps(case["config"]), encoding="utf-8")


def _model_path(case: dict[str, Any], tmp: Path) -> str:
    if "model" in case:
        return _sub(case["model"], tmp)
    assert "config" in case, case["name"]
    return str(tmp / "config.json")


def _flags(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        assert value is not None and not isinstance(value, (list, dict)), (
            f"{name}={value!r} has no CLI spelling: mark the case \"cli\": false")
        if value is True:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, float) and not math.isfinite(value):
            argv += [flag, repr(value)]  # nan, inf, -inf
        else:
            argv += [flag, str(value)]
    return argv


def _argv(case: dict[str, Any], tmp: Path) -> list[str]:
    if isinstance(case.get("cli"), list):
        return _sub(case["cli"], tmp)
    mode, model, options = case["mode"], _model_path(case, tmp), case.get("options") or {}
    if mode == "params":
        return ["params", model]
    if mode in ("infer", "train"):
        return [mode, model, *_flags(options)]
    argv = ["fit", model, mode.split("-")[1]]
    if case.get("gpu") is not None:
        argv += ["--gpu", case["gpu"]]
    if "gpus" in case:
        argv += ["--gpus", str(case["gpus"])]
    return argv + _flags(options)


def _python(case: dict[str, Any], tmp: Path) -> Any:
    mode = case["mode"]
    model = case["config"] if "config" in case and "model" not in case else _model_path(case, tmp)
    options = case.get("options") or {}
    if mode == "params":
        return memfit.params(model)
    if mode == "infer":
        return memfit.infer(model, **options)
    if mode == "train":
        return memfit.train(model, **options)
    extra = {"gpus": case["gpus"]} if "gpus" in case else {}
    fit = memfit.fit_infer if mode == "fit-infer" else memfit.fit_train
    return fit(model, gpu=case.get("gpu"), **extra, **options)


def _request(case: dict[str, Any]) -> dict[str, Any]:
    if isinstance(case.get("http"), dict):
        return case["http"]
    mode = case["mode"]
    model = case.get("config") if "model" not in case else case["model"]
    assert "{tmp}" not in json.dumps(model), f"{case['name']}: files need \"http\": false"
    if mode == "params":
        return {"path": "/api/params", "json": {"model": model}}
    if mode in ("infer", "train"):
        return {"path": f"/api/{mode}", "json": {"model": model,
                                                  "options": case.get("options") or {}}}
    body: dict[str, Any] = {"model": model, "mode": mode.split("-")[1],
                            "options": case.get("options") or {}}
    if case.get("gpu") is not None:
        body["gpu"] = case["gpu"]
    if "gpus" in case:
        body["gpus"] = case["gpus"]
    return {"path": "/api/fit", "json": body}


# -- the corpus itself ------------------------------------------------------------------------

def test_corpus_is_large_and_covers_every_door() -> None:
    assert len(CASES) >= 150
    for door in ("cli", "python", "http"):
        assert len(_cases(door)) >= 50, door


# -- CLI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _cases("cli"))
def test_cli_exits_2_with_one_line(case: dict[str, Any], tmp_path: Path, capsys,
                                   monkeypatch) -> None:
    _prepare(case, tmp_path)
    monkeypatch.chdir(tmp_path)  # nothing a case writes lands in the checkout
    code = main(_argv(case, tmp_path))
    out, err = capsys.readouterr()
    assert code == 2, (code, out[:300], err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("memfit: error: ") and "Traceback" not in err, line
    assert _norm(case["field"]) in _norm(line), (case["field"], line)
    assert "allowed" in line, line
    if "value" in case:
        assert case["value"] in line, line


def test_cli_errors_from_a_fresh_process(tmp_path: Path) -> None:
    """The installed entry point as a user runs it: status 2, one line, no traceback."""
    import subprocess
    import sys

    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama", "hidden')
    for argv in (["infer", "llama-3.1-8b", "--batch", "nan"], ["params", str(bad)],
                 ["train", "llama-3.1-8b", "--sp"]):
        proc = subprocess.run([sys.executable, "-m", "memfit", *argv], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


# -- Python API ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _cases("python"))
def test_python_raises_memfit_error(case: dict[str, Any], tmp_path: Path) -> None:
    _prepare(case, tmp_path)
    with pytest.raises(MemfitError) as info:
        _python(case, tmp_path)
    exc = info.value
    assert isinstance(exc, ValueError)
    message = str(exc)
    assert "\n" not in message, message
    assert _norm(case["field"]) in _norm(message), (case["field"], message)
    assert "allowed" in message and exc.allowed, message
    if "value" in case:
        assert case["value"] in message, message


# -- HTTP API --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Any:
    pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
    if not any(importlib.util.find_spec(m) for m in ("httpx2", "httpx")):
        pytest.skip("FastAPI's TestClient needs httpx2 (or httpx)")
    from fastapi.testclient import TestClient

    from memfit.web import create_app

    return TestClient(create_app(), raise_server_exceptions=True)


@pytest.mark.parametrize("case", _cases("http"))
def test_http_answers_422(case: dict[str, Any], client: Any) -> None:
    req = _request(case)
    method = req.get("method", "POST")
    if method == "GET":
        response = client.get(req["path"])
    else:
        if "json" in req:  # NaN and Infinity as JavaScript spells them
            content = json.dumps(req["json"]).encode()
        elif "body_hex" in req:
            content = bytes.fromhex(req["body_hex"])
        else:
            content = req["body"].encode()
        response = client.post(req["path"], content=content,
                               headers={"content-type": "application/json"})
    status = case.get("http_status", 422)
    assert response.status_code == status, response.text[:500]
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    for item in detail:
        assert {"loc", "msg", "input", "allowed"} <= set(item), item
        assert item["allowed"], item
    field = _norm(case.get("http_field", case["field"]))
    assert any(field in _norm(" ".join(map(str, d["loc"]))) or field in _norm(d["msg"])
               for d in detail), (field, detail)
