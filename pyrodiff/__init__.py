"""pyrodiff: denoising diffusion models written as Pyro programs.

The model p_θ(x_{0:T}) is a :class:`Diffusion` (a ``PyroModule``); its guide is the fixed
forward chain :class:`ForwardGuide`. Pyro's SVI with Trace_ELBO trains the pair, and
:class:`pyrodiff.infer.DiffusionELBO` does the same at one network call per datum. Swap in
:class:`LearnedGuide` or :class:`LearnedScheduleGuide` and the same model is a hierarchical
VAE with a learned q.
"""

from . import data, infer, networks
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ModelMismatchError,
    NonFiniteError,
    NotLinearGaussianError,
    PyrodiffError,
)
from .gaussian import Parameterization
from .guides import (
    AdaptiveNoiseGuide,
    ChainOrder,
    ContinuousForwardGuide,
    ForwardGuide,
    GuideStructure,
    HierarchicalVAEGuide,
    LearnedGuide,
    LearnedSchedule,
    LearnedScheduleGuide,
)
from .infer import DiffusionPrior
from .likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood
from .models import (
    AdaptiveDiffusion,
    Conditioning,
    ContinuousDiffusion,
    Diffusion,
    HierarchicalVAE,
    ReverseVariance,
    gaussian_oracle,
)
from .schedules import (
    CosineLogSNR,
    LearnedLogSNR,
    LinearLogSNR,
    LogSNRSchedule,
    MultivariateLogSNR,
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_alpha_bar,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveDiffusion",
    "AdaptiveNoiseGuide",
    "ChainOrder",
    "CheckpointError",
    "Conditioning",
    "ConfigError",
    "ContinuousDiffusion",
    "ContinuousForwardGuide",
    "CosineLogSNR",
    "DataError",
    "DeviceError",
    "Diffusion",
    "DiffusionPrior",
    "DiscretizedGaussianLikelihood",
    "ForwardGuide",
    "GaussianLikelihood",
    "GuideStructure",
    "HierarchicalVAE",
    "HierarchicalVAEGuide",
    "LearnedGuide",
    "LearnedLogSNR",
    "LearnedSchedule",
    "LearnedScheduleGuide",
    "LinearLogSNR",
    "LogSNRSchedule",
    "ModelMismatchError",
    "MultivariateLogSNR",
    "NoiseSchedule",
    "NonFiniteError",
    "NotLinearGaussianError",
    "Parameterization",
    "PyrodiffError",
    "ReverseVariance",
    "cosine_schedule",
    "data",
    "gaussian_oracle",
    "infer",
    "linear_schedule",
    "networks",
    "schedule_from_alpha_bar",
]
