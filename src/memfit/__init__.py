"""memfit: how much GPU memory a transformer needs for inference and training, exactly.

Importing memfit is cheap: no torch, transformers, numpy or matplotlib.
"""

from __future__ import annotations

from .api import ParamsResult, load_model, params
from .arch import ModelSpec, from_hf_config
from .errors import MemfitError
from .hardware import GPU, make_gpu
from .inference import fit_infer, infer
from .memory.breakdown import Estimate
from .sweep import SweepPoint, sweep
from .training import fit_train, train
from .workload import InferenceOptions, TrainingOptions

# The version's one definition: pyproject.toml reads it (setuptools dynamic attr), the CLI's
# --version, the web API and the tracer's records print it.
__version__ = "0.1.0"

__all__ = [
    "Estimate",
    "GPU",
    "InferenceOptions",
    "MemfitError",
    "ModelSpec",
    "ParamsResult",
    "TrainingOptions",
    "__version__",
    "fit_infer",
    "fit_train",
    "from_hf_config",
    "infer",
    "load_model",
    "make_gpu",
    "params",
    "sweep",
    "SweepPoint",
    "train",
]
