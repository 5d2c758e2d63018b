"""The HTTP API's request models, generated from the option dataclasses.

``workload.InferenceOptions`` and ``workload.TrainingOptions`` are the single definition of
every option: their field metadata (``help``, ``choices``, ``min``, ``max``, ``flag``,
``nullable``) becomes the pydantic models here (hence the OpenAPI schema at ``/docs``), the
description at ``GET /api/options`` that the page builds its form from, and the ``allowed``
text of a 422. Nothing here re-declares a field.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields
from dataclasses import Field as DataclassField
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from ..workload import InferenceOptions, TrainingOptions

__all__ = [
    "MODES",
    "OPTION_CLASSES",
    "COMMON_GPUS",
    "ModelInput",
    "ParamsRequest",
    "InferRequest",
    "TrainRequest",
    "FitRequest",
    "VerdictsRequest",
    "options_model",
    "describe_options",
    "allowed_text",
    "option_field",
]

#: The two scenario kinds and their option classes.
OPTION_CLASSES: dict[str, type] = {"infer": InferenceOptions, "train": TrainingOptions}
MODES = tuple(OPTION_CLASSES)

#: The row of common GPUs the page checks every scenario against (catalog names).
COMMON_GPUS = ("h100-sxm", "a100-sxm-80gb", "a100-sxm-40gb", "l40s", "l4", "rtx-4090")

#: Longest model string accepted (catalog names are short; paths need the operator's flag).
MAX_MODEL_NAME = 512
#: Longest GPU name accepted.
MAX_GPU_NAME = 128
#: Most GPUs one ``/api/verdicts`` request may name.
MAX_VERDICT_GPUS = 16

ModelInput = (Annotated[str, StringConstraints(min_length=1, max_length=MAX_MODEL_NAME)]
              | dict[str, Any])
"""A catalog name, or an inline ``config.json`` object (paths only where the operator allows)."""

_MODEL_FIELD = Field(
    description="a catalog name (see GET /api/models) or an inline config.json object; "
                "file paths and hf: names only where the server's operator enabled them",
    examples=["llama-3.1-8b"])


def _value_type(cls: type, f: DataclassField[Any]) -> Any:
    """The field's Python type without ``None`` (``str | None`` -> ``str``)."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        assert len(args) == 1, (f.name, hint)
        return args[0]
    return hint


def _kind(cls: type, f: DataclassField[Any]) -> str:
    """The JSON kind of one option: boolean, integer, number, string or choice."""
    meta = f.metadata
    if meta.get("flag"):
        return "boolean"
    if meta.get("choices") is not None:
        return "choice"
    t = _value_type(cls, f)
    return {bool: "boolean", int: "integer", float: "number"}.get(t, "string")


def allowed_text(cls: type, f: DataclassField[Any]) -> str:
    """What the option accepts, in the words ``workload._check`` uses in its errors."""
    meta = f.metadata
    kind = _kind(cls, f)
    if kind == "boolean":
        text = "true or false"
    elif kind == "choice":
        text = ", ".join(str(c) for c in meta["choices"] if c is not None)
    elif kind in ("integer", "number"):
        noun = "an integer" if kind == "integer" else "a number"
        text = f"{noun} in [{meta.get('min')}, {meta.get('max')}]"
    else:
        text = "a string"
    if meta.get("nullable"):
        text += " (or null for the default)"
    return text


def option_field(mode: str, name: str) -> DataclassField[Any] | None:
    """The dataclass field called ``name`` (CLI spelling accepted) of ``mode``'s options."""
    cls = OPTION_CLASSES.get(mode)
    if cls is None:
        return None
    key = str(name).replace("-", "_")
    return next((f for f in fields(cls) if f.name == key), None)


def _exact_int(value: Any) -> Any:
    if type(value) is not int:
        raise ValueError("input should be an integer (not a boolean or a float)")
    return value


def options_model(cls: type, *, skip: tuple[str, ...] = (), name: str | None = None
                  ) -> type[BaseModel]:
    """A pydantic model with one field per dataclass field of ``cls`` (unknown keys refused).

    Types come from the dataclass annotations; choices become ``Literal``; ``min``/``max``
    become ``ge``/``le``; ``help`` becomes the description; defaults are the dataclass's.
    """
    spec: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        kind = _kind(cls, f)
        if kind == "choice":
            shown = tuple(c for c in meta["choices"] if c is not None)
            ann: Any = Literal[shown]  # type: ignore[valid-type]
            if all(type(c) is int for c in shown):
                # a Literal matches by equality, so true and 1.0 would pass as 1
                ann = Annotated[ann, BeforeValidator(_exact_int)]
        elif kind == "boolean":
            ann = bool
        else:
            ann = _value_type(cls, f)
            bounds = {k: v for k, v in (("ge", meta.get("min")), ("le", meta.get("max")))
                      if v is not None}
            if bounds:
                ann = Annotated[ann, Field(**bounds)]
        if meta.get("nullable") or (meta.get("choices") and None in meta["choices"]):
            ann = ann | None
        default = None if f.default is MISSING else f.default
        info: dict[str, Any] = {
            "default": default, "description": meta.get("help", ""),
            "json_schema_extra": {"x-flag": "--" + f.name.replace("_", "-"),
                                  "x-allowed": allowed_text(cls, f)}}
        spec[f.name] = (ann, Field(**info))
    model_name = name or f"{cls.__name__}Model"
    # strict: "8", true or 1.5 are not an integer here either, as in the Python API
    return create_model(model_name, __config__=ConfigDict(extra="forbid", strict=True),  # type: ignore[call-overload]
                        __doc__=(cls.__doc__ or "").strip(), **spec)


InferenceOptionsModel = options_model(InferenceOptions)
TrainingOptionsModel = options_model(TrainingOptions)
# In /api/fit the GPU is the request's own ``gpu`` field, as in `memfit fit --gpu`.
InferenceFitOptionsModel = options_model(InferenceOptions, skip=("gpu",),
                                         name="InferenceFitOptionsModel")
TrainingFitOptionsModel = options_model(TrainingOptions, skip=("gpu",),
                                        name="TrainingFitOptionsModel")

class ParamsRequest(BaseModel):
    """``POST /api/params``: exact parameter counts of one model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelInput = _MODEL_FIELD


class InferRequest(BaseModel):
    """``POST /api/infer``: ``memfit infer MODEL [options]``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelInput = _MODEL_FIELD
    options: InferenceOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=InferenceOptionsModel, description="memfit infer's options")


class TrainRequest(BaseModel):
    """``POST /api/train``: ``memfit train MODEL [options]``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelInput = _MODEL_FIELD
    options: TrainingOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=TrainingOptionsModel, description="memfit train's options")


_GPU_NAME = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GPU_NAME)]


class FitInferRequest(BaseModel):
    """``memfit fit MODEL infer --gpu G [--gpus N] [options]``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    mode: Literal["infer"]
    model: ModelInput = _MODEL_FIELD
    gpu: _GPU_NAME = Field(description="GPU kind (see GET /api/gpus)", examples=["h100"])
    gpus: int | None = Field(default=None, ge=1, description="number of GPUs (default: "
                                "the options' tp x pp, or the fewest that fit)")
    options: InferenceFitOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=InferenceFitOptionsModel)


class FitTrainRequest(BaseModel):
    """``memfit fit MODEL train --gpu G [--gpus N] [options]``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    mode: Literal["train"]
    model: ModelInput = _MODEL_FIELD
    gpu: _GPU_NAME = Field(description="GPU kind (see GET /api/gpus)", examples=["h100"])
    gpus: int | None = Field(default=None, ge=1, description="number of GPUs (default: "
                                "the options' dp x tp x pp x cp)")
    options: TrainingFitOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=TrainingFitOptionsModel)


FitRequest = Annotated[FitInferRequest | FitTrainRequest, Field(discriminator="mode")]
"""``POST /api/fit``: body ``{model, mode: infer|train, gpu, gpus, options}``."""


class VerdictsInferRequest(BaseModel):
    """Does one inference scenario fit each of ``gpus``?"""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    mode: Literal["infer"]
    model: ModelInput = _MODEL_FIELD
    gpus: list[_GPU_NAME] = Field(default_factory=lambda: list(COMMON_GPUS),
                                  max_length=MAX_VERDICT_GPUS)
    options: InferenceFitOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=InferenceFitOptionsModel)


class VerdictsTrainRequest(BaseModel):
    """Does one training scenario fit each of ``gpus``?"""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    mode: Literal["train"]
    model: ModelInput = _MODEL_FIELD
    gpus: list[_GPU_NAME] = Field(default_factory=lambda: list(COMMON_GPUS),
                                  max_length=MAX_VERDICT_GPUS)
    options: TrainingFitOptionsModel = Field(  # type: ignore[valid-type]
        default_factory=TrainingFitOptionsModel)


VerdictsRequest = Annotated[VerdictsInferRequest | VerdictsTrainRequest,
                            Field(discriminator="mode")]
"""``POST /api/verdicts``: body ``{model, mode, gpus: [names], options}``."""


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Each option of ``cls`` as the page needs it to build a form control."""
    out = []
    for f in fields(cls):
        meta = f.metadata
        choices = meta.get("choices")
        out.append({
            "name": f.name,
            "flag": "--" + f.name.replace("_", "-"),
            "kind": _kind(cls, f),
            "default": None if f.default is MISSING else f.default,
            "help": meta.get("help", ""),
            "choices": None if choices is None else [c for c in choices if c is not None],
            "min": meta.get("min"),
            "max": meta.get("max"),
            "nullable": bool(meta.get("nullable")),
            "allowed": allowed_text(cls, f),
        })
    return out
