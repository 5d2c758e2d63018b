"""Training launch command lines: the launcher gives the world size, the script's arguments or
its config file give the rest.

* ``torchrun [--nproc_per_node N] [--nnodes M] script.py ARGS`` (PyTorch
  ``torch/distributed/run.py``: world size = nproc_per_node x nnodes);
* ``accelerate launch [--num_processes N] [--config_file F] script.py ARGS`` (accelerate
  ``commands/launch.py``; the config file is read as :mod:`.accelerate` reads it);
* ``deepspeed [--num_gpus N] [--num_nodes M] script.py ARGS`` (DeepSpeed
  ``launcher/runner.py``);
* ``python script.py ARGS`` and ``trl sft|dpo ARGS`` (TRL ``trl/cli.py``): ARGS are
  ``TrainingArguments`` / TRL fields as ``HfArgumentParser`` reads them (``--name value``,
  a bare ``--flag`` = true, ``_`` or ``-``);
* ``llamafactory-cli train CONFIG`` (LLaMA-Factory ``cli.py``), ``axolotl train CONFIG`` and
  ``python -m axolotl.cli.train CONFIG`` (axolotl ``cli/main.py``), ``tune run [--nproc_per_node
  N] RECIPE --config CONFIG [key=value ...]`` (torchtune ``_cli/run.py``; the overrides are
  dotted keys): the config file is read as its own reader reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Translation, long_options, to_int

__all__ = ["read_launch", "LAUNCHERS"]

LAUNCHERS = ("torchrun", "accelerate", "deepspeed", "trl", "llamafactory-cli", "axolotl", "tune")
Opener = Callable[[str], Any]

# launcher options that take a value (the script is the first word after them)
_TORCHRUN = {"nproc-per-node", "nnodes", "node-rank", "master-addr", "master-port",
             "rdzv-backend", "rdzv-endpoint", "rdzv-id", "rdzv-conf", "max-restarts",
             "monitor-interval", "log-dir", "redirects", "tee", "role", "local-addr",
             "start-method", "run-path", "local-ranks-filter"}
_ACCELERATE = {"config-file", "num-processes", "num-machines", "mixed-precision",
               "machine-rank", "main-process-ip", "main-process-port", "deepspeed-config-file",
               "zero-stage", "gradient-accumulation-steps", "fsdp-sharding-strategy",
               "gpu-ids", "dynamo-backend", "rdzv-backend", "same-network",
               "num-cpu-threads-per-process",
               "deepspeed-hostfile", "offload-optimizer-device", "offload-param-device"}
_DEEPSPEED = {"num-gpus", "num-nodes", "include", "exclude", "master-port", "master-addr",
              "hostfile", "launcher", "node-rank"}


def _split(words: list[str], valued: set[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Launcher options (until the first word that is not one) and the rest."""
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name, eq, value = words[i].partition("=")
        key = name.lstrip("-").replace("_", "-")
        if key in valued and not eq:
            if i + 1 >= len(words):
                raise MemfitError.bad_value(key, None, f"{name} VALUE")
            value, i = words[i + 1], i + 1
        opts[key] = value if (eq or key in valued) else True
        i += 1
    return opts, words[i:]


def _hf_args(argv: list[str], open_ref: Opener | None) -> dict[str, Any]:
    """A script's ``--name value`` arguments as TrainingArguments fields."""
    words, pairs = long_options(argv, frozenset(), {})
    data: dict[str, Any] = {}
    for key, value in pairs:
        name = key.replace("-", "_")
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                raise MemfitError.bad_value(name, value[:60], "a JSON object") from None
        elif name == "fsdp_config" and isinstance(value, str) and open_ref:
            value = open_ref(value) or value
        data[name] = value
    return data


def _script(t_words: list[str], open_ref: Opener | None, kind: str) -> Translation:
    """``script.py ARGS`` (or ``-m module ARGS``) under a launcher."""
    from .hf import looks_like_hf, read_hf

    rest = t_words[1:] if t_words and not t_words[0].startswith("-") else t_words
    module = None
    if rest[:1] == ["-m"] and len(rest) > 1:
        module, rest = rest[1], rest[2:]
    if module in ("axolotl.cli.train", "axolotl.cli.main") and rest:
        return _config_file(rest[-1] if rest[0] == "train" else rest[0], open_ref)
    data = _hf_args(rest, open_ref)
    if not data or not (looks_like_hf(data) or "per_device_train_batch_size" in data):
        raise MemfitError.bad_value("command", " ".join(t_words[:3])[:80],
                                    f"a training script given TrainingArguments after {kind} "
                                    "(--per_device_train_batch_size ...), or a config file")
    return read_hf(data, open_ref)


def _config_file(path: str, open_ref: Opener | None, overrides: Mapping[str, str] = {}
                 ) -> Translation:
    from . import _read_mapping

    data = open_ref(path) if open_ref else None
    if data is None:
        raise MemfitError.bad_value("config", path, "a config file that exists (check it "
                                    "with `memfit check FILE`)")
    data = dict(data)
    for key, value in overrides.items():  # torchtune's dotted overrides
        node: dict[str, Any] = data
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, Mapping) else {}
            node = node[p]
        from .yamlish import scalar

        node[leaf] = scalar(value)
    return _read_mapping({k: v for k, v in data.items() if v is not None}, open_ref or _none)


def _none(ref: str) -> None:
    return None


def _world(t: Translation, field: str, value: Any) -> Translation:
    t.world = to_int(field, value, 1) * (t.world or 1)
    t.understood.insert(0, {"field": field, "value": value, "option": f"--gpus {t.world}"})
    return t


def read_launch(words: list[str], open_ref: Opener | None) -> Translation:
    prog = os.path.basename(words[0])
    args = words[1:]
    if prog == "torchrun":
        opts, rest = _split(args, _TORCHRUN)
        t = _script(rest, open_ref, prog)
        nodes = to_int("nnodes", opts.get("nnodes", 1), 1)
        procs = opts.get("nproc-per-node", 1)
        t.world = nodes
        return _world(t, "torchrun --nproc_per_node", 1 if procs in ("gpu", "auto") else procs)
    if prog == "deepspeed":
        opts, rest = _split(args, _DEEPSPEED)
        t = _script(rest, open_ref, prog)
        if "num-gpus" not in opts:  # every GPU of the machine: give --gpus beside
            return t
        t.world = to_int("num_nodes", opts.get("num-nodes", 1), 1)
        return _world(t, "deepspeed --num_gpus", opts["num-gpus"])
    if prog == "accelerate" and args[:1] == ["launch"]:
        return _accelerate(args[1:], open_ref)
    if prog == "trl" and args[:1] in (["sft"], ["dpo"], ["grpo"], ["kto"]):
        t = _script(["trl", *args[1:]], open_ref, "trl")
        if args[0] == "sft" and "seq" not in t.options:  # trl/trainer/sft_config.py
            t.options["seq"] = 1024
            t.understood.append({"field": "max_length", "value": "(SFTConfig default 1024)",
                                 "option": "--seq 1024"})
        if args[0] != "sft":
            t.ignored.append({"field": f"trl {args[0]}", "value": None,
                              "why": "this trainer also holds a reference or reward model and "
                                     "generations: more memory than the step memfit counts"})
        return t
    if prog == "llamafactory-cli" and args[:1] == ["train"] and len(args) > 1:
        return _config_file(args[1], open_ref)
    if prog == "axolotl" and args[:1] in (["train"], ["preprocess"]) and len(args) > 1:
        return _config_file(args[1], open_ref)
    if prog == "tune" and args[:1] == ["run"]:
        return _tune(args[1:], open_ref)
    return _script(words, open_ref, prog)  # python script.py ARGS


def _accelerate(args: list[str], open_ref: Opener | None) -> Translation:
    from .accelerate import read_accelerate

    opts, rest = _split(args, _ACCELERATE)
    t = _script(rest, open_ref, "accelerate launch")
    if "config-file" in opts:
        cfg = open_ref(str(opts["config-file"])) if open_ref else None
        if cfg is None:
            t.ignored.append({"field": "--config_file", "value": opts["config-file"],
                              "why": "not found; give --gpus (and the layout) beside"})
        else:
            launcher = read_accelerate(cfg, open_ref)
            for key, value in launcher.options.items():
                t.options.setdefault(key, value)
            t.understood += launcher.understood
            t.ignored += launcher.ignored
    if "num-processes" in opts:
        t.options.pop("dp", None)
        t.world = None
        _world(t, "accelerate --num_processes", opts["num-processes"])
    return t


def _tune(args: list[str], open_ref: Opener | None) -> Translation:
    opts, rest = _split(args, {"nproc-per-node", "nnodes"})
    if not rest:
        raise MemfitError.bad_value("tune run", None, "RECIPE --config CONFIG")
    words, pairs = long_options(rest[1:], frozenset(), {})
    config = dict(pairs).get("config")
    if not isinstance(config, str):
        raise MemfitError.bad_value("config", None, "tune run RECIPE --config CONFIG.yaml")
    overrides = dict(w.split("=", 1) for w in words if "=" in w)
    t = _config_file(config, open_ref, overrides)
    if "nproc-per-node" in opts:
        _world(t, "tune run --nproc_per_node", opts["nproc-per-node"])
    return t
