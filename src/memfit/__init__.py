"""memfit: how much GPU memory a transformer needs for inference and training, exactly.

Importing memfit is cheap: no torch, transformers, numpy or matplotlib.
"""

from __future__ import annotations

from .api import ParamsResult, load_model, params
from .inference import fit_infer, infer
from .memory.breakdown import Estimate
from .training import fit_train, train
from .arch import ModelSpec, from_hf_config
from .errors import MemfitError
from .workload import InferenceOptions, TrainingOptions

__version__ = "0.1.0"

__all__ = sorted([
    "Estimate",
    "InferenceOptions",
    "fit_infer",
    "fit_train",
    "infer",
    "train",
    "MemfitError",
    "ModelSpec",
    "ParamsResult",
    "TrainingOptions",
    "__version__",
    "from_hf_config",
    "load_model",
    "params",
])
