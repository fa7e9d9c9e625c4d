"""A run's whole configuration as one frozen dataclass, and the one place that builds it.

:class:`RunConfig` holds everything needed to rerun a training run: the data, the model and
guide structure, the network size, the objective and the optimisation settings. It is written
to ``config.json`` in the run folder (:meth:`RunConfig.to_json`) and read back with
:meth:`RunConfig.from_json`. :func:`build` turns it into ``(model, guide, dataset, loss)``;
the command line, the examples and the studies all go through it, so a configuration means
the same thing everywhere.

Options are enums. Strings are accepted where a value enters from outside (JSON, the command
line) and are converted on construction; an unknown value raises
:class:`~pyrodiff.errors.ConfigError` listing the valid ones.

The package's modules, one job each:

- :mod:`~pyrodiff.config.kinds`: the enums (model, guide, schedule, network, objective, timesteps);
- :mod:`~pyrodiff.config.fields`: each identity field declared once (type, range, default, help);
  the training options are declared in :mod:`pyrodiff.train.options`, shared with ``fit``;
- :mod:`~pyrodiff.config.run`: :class:`RunConfig` and its JSON form;
- :mod:`~pyrodiff.config.defaults`: the defaults that are rules (an hvae's guide, the warm-up);
- :mod:`~pyrodiff.config.rules`: which model, guide, objective and variance go together;
- :mod:`~pyrodiff.config.migrate`: reading older ``config.json`` files, errors naming the file;
- :mod:`~pyrodiff.config.fit_args`: the keyword arguments of ``fit``;
- :mod:`~pyrodiff.config.builders`: :func:`build` and its parts.
"""

from ..checkpoint import CONFIG_NAME
from ..train.options import MIN_EVAL_EVERY
from ..validation import parse_enum
from .builders import (
    CONTINUOUS_GAMMA_ENDS,
    CONTINUOUS_LOG_SNR_ENDS,
    FOURIER_EXPONENTS,
    Built,
    adaptive_latent_dim,
    build,
    build_denoiser,
    build_guide,
    build_loss,
    build_model,
    build_schedule,
    build_timesteps,
    load_data,
)
from .defaults import AUTO_FIELDS
from .fields import ADAPTIVE_LATENT_DIM, CONTINUOUS_NUM_STEPS, DIFFUSION_NUM_STEPS, HVAE_NUM_STEPS
from .kinds import GuideKind, ModelKind, NetworkKind, Objective, ScheduleKind, TimestepKind
from .migrate import CONFIG_VERSION
from .run import RunConfig

__all__ = [
    "ADAPTIVE_LATENT_DIM",
    "AUTO_FIELDS",
    "CONFIG_NAME",
    "CONFIG_VERSION",
    "CONTINUOUS_GAMMA_ENDS",
    "CONTINUOUS_LOG_SNR_ENDS",
    "CONTINUOUS_NUM_STEPS",
    "DIFFUSION_NUM_STEPS",
    "FOURIER_EXPONENTS",
    "HVAE_NUM_STEPS",
    "MIN_EVAL_EVERY",
    "Built",
    "GuideKind",
    "ModelKind",
    "NetworkKind",
    "Objective",
    "RunConfig",
    "ScheduleKind",
    "TimestepKind",
    "adaptive_latent_dim",
    "build",
    "build_denoiser",
    "build_guide",
    "build_loss",
    "build_model",
    "build_schedule",
    "build_timesteps",
    "load_data",
    "parse_enum",
]
