"""``memfit check``: read the user's own command line or config file, say what was understood
and what was ignored, and answer as the equivalent ``memfit infer|train`` call.

One small module per artefact family, each a pure function from the artefact to a
:class:`Translation` (memfit options, ``understood``, ``ignored``):

* :mod:`.vllm`: ``vllm serve``, ``python -m vllm.entrypoints.openai.api_server``,
  ``python -m sglang.launch_server``;
* :mod:`.llamacpp`: ``llama-server`` / ``llama-cli``, Ollama Modelfiles and ``OLLAMA_*``
  settings;
* :mod:`.deepspeed`, :mod:`.hf` (TrainingArguments / TRL), :mod:`.axolotl`,
  :mod:`.llamafactory`, :mod:`.torchtune`, :mod:`.torchtitan` (TOML), :mod:`.accelerate`.

This module detects the kind, adds what is given beside the artefact with memfit's own flags
(``--model``, ``--gpu``, ``--dp``/``--gpus`` ...), and builds the equivalent call. YAML is read
by :mod:`.yamlish` (no PyYAML needed), TOML by :mod:`tomllib` (Python 3.11+).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import MemfitError
from ..workload import InferenceOptions, TrainingOptions
from ._base import Translation, flag_text

__all__ = ["PROGRAMS", "Translation", "read_command", "read_file", "read_text", "complete",
           "equivalent_argv", "estimate", "answer", "check_text", "KINDS"]

KINDS = ("vllm", "sglang", "llama-server", "llama-cli", "ollama", "deepspeed", "hf-trainer",
         "axolotl", "llama-factory", "torchtune", "torchtitan", "accelerate")
_MAX_FILE_BYTES = 1 << 20  # configs and command lines are kilobytes
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PROGRAMS = "vllm serve, python -m vllm.entrypoints.openai.api_server, python -m " \
            "sglang.launch_server, llama-server, llama-cli, torchrun, accelerate launch, " \
            "deepspeed, python script.py, trl sft, llamafactory-cli train, axolotl train, " \
            "tune run"
#: the first words of the command lines ``memfit check`` reads
PROGRAMS = ("vllm", "python", "python3", "llama-server", "llama-cli", "torchrun", "accelerate",
            "deepspeed", "trl", "llamafactory-cli", "axolotl", "tune")


def read_command(argv: Sequence[str], base: Path | None = None) -> Translation:
    """A command line (its words, or one string to split as a shell would); files it names
    (``--deepspeed ds.json``, ``llamafactory-cli train cfg.yaml``) are read relative to
    ``base``, or listed as ignored without one."""
    words = list(argv)
    if len(words) == 1 and " " in words[0].strip():
        try:
            words = shlex.split(words[0])
        except ValueError as exc:
            raise MemfitError.bad_value("command", words[0][:80],
                                        f"a shell command ({exc})") from None
    env = {}
    while words and _ASSIGN.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words:
        raise MemfitError.bad_value("command", None, _PROGRAMS)
    t = _dispatch(words, _opener(base))
    for key, value in env.items():
        t.ignored.append({"field": key, "value": value, "why": "environment: GPU selection or "
                          "settings with no memory effect memfit models"})
    return t


def _dispatch(words: list[str], open_ref: Callable[[str], Any]) -> Translation:
    from .launch import LAUNCHERS, read_launch
    from .llamacpp import read_llamacpp
    from .vllm import read_sglang, read_vllm

    prog = os.path.basename(words[0])
    if prog == "vllm" and words[1:2] == ["serve"]:
        return read_vllm(words[2:])
    if re.match(r"^python(\d(\.\d+)?)?$", prog) and words[1:2] == ["-m"] and len(words) > 2:
        module = words[2]
        if module == "vllm.entrypoints.openai.api_server":
            return read_vllm(words[3:])
        if module in ("sglang.launch_server", "sglang_router.launch_server"):
            return read_sglang(words[3:])
    if prog in ("llama-server", "llama-cli", "server", "main"):
        name = {"server": "llama-server", "main": "llama-cli"}.get(prog, prog)
        return read_llamacpp(name, words[1:])
    if prog in LAUNCHERS or (re.match(r"^python(\d(\.\d+)?)?$", prog) and len(words) > 1):
        return read_launch(words, open_ref)
    raise MemfitError.bad_value("command", " ".join(words[:3]), _PROGRAMS
                                + " (or a config file: memfit check FILE)")


def read_file(path: str | Path) -> Translation:
    """A config file or a shell script holding one command line."""
    p = Path(os.path.expanduser(str(path)))
    shown = str(path)[:200].encode("unicode_escape").decode("ascii")
    if not p.is_file():
        raise MemfitError.bad_value("file", shown, "an existing config file or script")
    if p.stat().st_size > _MAX_FILE_BYTES:
        raise MemfitError.bad_value("file", shown, f"at most {_MAX_FILE_BYTES:,} bytes")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MemfitError.bad_value("file", shown, f"a readable UTF-8 text file ({exc})") \
            from None
    return read_text(text, p.name, p.parent)


def _opener(base: Path | None) -> Callable[[str], Any]:
    """Reads a config a config refers to (``deepspeed: ds_z3.json``), relative to its folder;
    None when it is not there."""
    def open_ref(ref: str) -> Any:
        if base is None:
            return None
        p = Path(os.path.expanduser(ref))
        p = p if p.is_absolute() else base / p
        if not p.is_file() or p.stat().st_size > _MAX_FILE_BYTES:
            return None
        return _parse_mapping(p.read_text(encoding="utf-8"), p.name)
    return open_ref


def _command_text(text: str) -> list[str] | None:
    """The words of a shell script's one command (``\\`` continuations joined), or None."""
    body = re.sub(r"\\\r?\n", " ", text)
    lines = [x.strip() for x in body.splitlines() if x.strip() and not x.strip().startswith("#")
             and not _SETUP.match(x.strip())]
    if len(lines) != 1:
        return None
    # the script's own VAR=value settings, expanded in its command ($MODEL, ${TP})
    names: dict[str, str] = {m[1]: m[2] for m in _VAR.finditer(body)}
    line = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: names.get(m[1], m[0]), lines[0])
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    rest = [w for w in words if not _ASSIGN.match(w)]
    if rest and (os.path.basename(rest[0]) in PROGRAMS
                 or re.match(r"^python", os.path.basename(rest[0]))):
        return words
    return None


# a script's setup lines around its one command: set -e, cd, source, echo, module load,
# conda/venv activation, a bare VAR=value or export VAR=value
_SETUP = re.compile(r"^(set|cd|source|\.|echo|module|conda|mkdir|export\s+[A-Za-z_]\w*=\S*$|"
                    r"[A-Za-z_]\w*=\S*$)")
_VAR = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=[\"']?([^\s\"']*)[\"']?\s*$", re.M)
_TOML_TABLE = re.compile(r"^\s*\[[A-Za-z0-9_.\-]+\]\s*(#.*)?$", re.M)


def _parse_mapping(text: str, name: str) -> Mapping[str, Any]:
    if name.lower().endswith(".toml") or (not name.lower().endswith((".yaml", ".yml", ".json"))
                                          and _TOML_TABLE.search(text)):
        from .torchtitan import loads_toml

        return loads_toml(text)
    if name.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MemfitError(f"json: not valid JSON ({exc.msg} at line {exc.lineno}); "
                              "allowed: a JSON object", field="json", value=None,
                              allowed="a JSON object") from None
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, deep nesting
            raise MemfitError(f"json: not a config memfit reads ({str(exc)[:80]}); allowed: "
                              "a JSON object of config fields", field="json", value=None,
                              allowed="a JSON object") from None
    else:
        from .yamlish import loads

        data = loads(text)
    if not isinstance(data, Mapping):
        raise MemfitError.bad_value("file", type(data).__name__, "a mapping of config fields")
    return data


def read_text(text: str, name: str = "config", base: Path | None = None) -> Translation:
    """An artefact's text: the kind is detected from its content (and ``name``'s suffix)."""
    from .llamacpp import looks_like_ollama, read_ollama

    words = _command_text(text)
    if words is not None:
        return read_command(words, base)
    if name.lower().startswith("modelfile") or looks_like_ollama(text):
        return read_ollama(text)
    data = _parse_mapping(text, name)
    # an empty YAML value (``fsdp:``) is the field left unset
    return _read_mapping({k: v for k, v in data.items() if v is not None}, _opener(base))


def _read_mapping(data: Mapping[str, Any], open_ref: Callable[[str], Any]) -> Translation:
    from . import accelerate, axolotl, deepspeed, hf, llamafactory, torchtitan, torchtune

    if torchtitan.looks_like_torchtitan(data):
        return torchtitan.read_torchtitan(data)
    if torchtune.looks_like_torchtune(data):
        return torchtune.read_torchtune(data)
    if deepspeed.looks_like_deepspeed(data):
        return deepspeed.read_deepspeed(data)
    if accelerate.looks_like_accelerate(data):
        return accelerate.read_accelerate(data, open_ref)
    if axolotl.looks_like_axolotl(data):
        return axolotl.read_axolotl(data, open_ref)
    if llamafactory.looks_like_llamafactory(data):
        return llamafactory.read_llamafactory(data, open_ref)
    if hf.looks_like_hf(data):
        return hf.read_hf(data, open_ref)
    raise MemfitError.bad_value("file", ", ".join(list(data)[:5]) or "empty",
                                "a DeepSpeed JSON, TrainingArguments/TRL, axolotl, "
                                "LLaMA-Factory, torchtune, accelerate or torchtitan config, "
                                "an Ollama Modelfile or a script with one " + _PROGRAMS
                                + " command")


def _options_class(mode: str) -> type:
    return InferenceOptions if mode == "infer" else TrainingOptions


def complete(t: Translation, beside: Mapping[str, Any]) -> Translation:
    """Add the options given beside the artefact (they win over the artefact's own, which
    then go to ``ignored``), the launcher's world size, the distributed defaults, and the
    options that are a property of the model (``--cpu-moe``)."""
    names = {f.name for f in fields(_options_class(t.mode))}
    for key, value in beside.items():
        if value is None:
            continue
        if key == "model":
            if t.model is not None and t.model != value:
                t.ignored.append({"field": "MODEL", "value": t.model,
                                  "why": f"overridden by --model {value} given beside"})
            t.model = str(value)
        elif key == "gpus":
            _world(t, int(value))
            t.world = None
        elif key not in names:
            raise MemfitError.bad_value(key, value, f"an option of memfit {t.mode} "
                                        f"(this {t.kind} artefact is {t.mode})")
        else:
            _override(t, key, value)
    if t.world is not None:  # the launcher's world size, when --gpus was not given beside
        _world(t, t.world, "by the launcher's world size")
    if t.model is None:
        raise MemfitError("model: the artefact names no model; allowed: --model MODEL beside "
                          "it (a catalog name, an HF id, a config.json or a .gguf)",
                          field="model", value=None, allowed="--model MODEL")
    if t.options.get("dp", 1) > 1:
        for key, value in t.when_distributed.items():
            t.options.setdefault(key, value)
    if t.per_model:
        _from_model(t)
    return t


def _override(t: Translation, key: str, value: Any, by: str = "given beside") -> None:
    old = t.options.get(key)
    if old is not None and old != value:
        field = next((u["field"] for u in reversed(t.understood)
                      if u["option"].startswith(flag_text(key, old))), key)
        t.ignored.append({"field": field, "value": old,
                          "why": f"overridden by {flag_text(key, value)} {by}"})
    t.options[key] = value


def _world(t: Translation, gpus: int, by: str = "given beside") -> None:
    """``--gpus N`` beside a training config: the data-parallel degree that fills N GPUs."""
    if t.mode != "train":
        raise MemfitError.bad_value("gpus", gpus, "--tp / --pp for an inference command "
                                    "(--gpus is the world size of a training run)")
    model_par = t.options.get("tp", 1) * t.options.get("pp", 1) * t.options.get("cp", 1)
    if gpus < 1 or gpus % model_par:
        raise MemfitError.bad_value("gpus", gpus, f"a multiple of tp x pp x cp = {model_par}")
    _override(t, "dp", gpus // model_par, by)


def _from_model(t: Translation) -> None:
    """Options the artefact sets as a property of the model: every layer (``--cpu-moe``).
    (Context defaults that are the model's own are the engines' own defaults: vLLM's
    ``--max-model-len``, SGLang's ``--context-length``, llama.cpp's ``--ctx-size 0``.)"""
    from ..catalog import resolve_model

    spec, _ = resolve_model(t.model)  # type: ignore[arg-type]
    for option, attr in t.per_model.items():
        t.options.setdefault(option, getattr(spec, attr))


def equivalent_argv(t: Translation) -> list[str]:
    """The ``memfit infer|train`` command the translation amounts to."""
    argv = [t.mode, str(t.model)]
    defaults = {f.name: f.default for f in fields(_options_class(t.mode))}
    for key, value in t.options.items():
        if value is False and defaults.get(key) is False:
            continue
        argv += flag_text(key, value).split(" ", 1)
    return argv


def estimate(t: Translation) -> Any:
    """The :class:`~memfit.inference.Estimate` of a completed translation: exactly
    ``memfit.infer`` / ``memfit.train`` with its options."""
    if t.mode == "infer":
        from ..inference import infer

        return infer(t.model, **t.options)  # type: ignore[arg-type]
    from ..training import train

    return train(t.model, **t.options)  # type: ignore[arg-type]


def answer(t: Translation) -> dict[str, Any]:
    """The JSON of ``memfit check``: the equivalent call's, plus ``understood``, ``ignored``
    and ``artefact`` (its kind and the equivalent command line)."""
    out = estimate(t).to_dict()
    out.update(understood=t.understood, ignored=t.ignored,
               artefact={"kind": t.kind, "equivalent": "memfit " + shlex.join(
                   equivalent_argv(t))})
    return out


def check_text(text: str, name: str = "pasted", **beside: Any) -> dict[str, Any]:
    """A pasted command line or config file (for Python and the web page): ``beside`` holds
    memfit options (``model=``, ``gpu=``, ``gpus=`` ...). A config's references to other
    files (``deepspeed: ds.json``) are listed as ignored: there is no folder to read them
    from."""
    if not isinstance(text, str) or not text.strip():
        raise MemfitError.bad_value("artefact", text, "a command line or a config file's text")
    if len(text) > _MAX_FILE_BYTES:
        raise MemfitError.bad_value("artefact", f"{len(text):,} characters",
                                    f"at most {_MAX_FILE_BYTES:,}")
    first = text.strip().split()[0]
    if os.path.basename(first) in PROGRAMS or _ASSIGN.match(first):
        t = read_command(shlex.split(re.sub(r"\\\r?\n", " ", text), comments=True))
    else:
        t = read_text(text, name)
    return answer(complete(t, beside))

