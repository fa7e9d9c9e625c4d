"""The fields of a run's identity (its data, model, guide and objective), each declared once as
an :class:`~pyrodiff.validation.Option`: type, range, default and help. The training options
are declared beside ``fit``, in :data:`pyrodiff.train.options.OPTIONS`."""

from __future__ import annotations

from typing import Any

from ..data.registry import dataset_names
from ..errors import ConfigError
from ..gaussian import Parameterization
from ..models.diffusion import ReverseVariance
from ..validation import AUTO, Option, OptionSet
from .kinds import GuideKind, ModelKind, NetworkKind, Objective, ScheduleKind, TimestepKind

__all__ = [
    "ADAPTIVE_LATENT_DIM",
    "CONTINUOUS_NUM_STEPS",
    "DIFFUSION_NUM_STEPS",
    "FIELDS",
    "HVAE_NUM_STEPS",
]

DIFFUSION_NUM_STEPS = 100
"""T of a diffusion model when none is given (the digits default, docs/cli.md)."""
HVAE_NUM_STEPS = 8
"""Latent layers of an hvae when none is given. Its guide is read through the literal chain
(T network calls per datum): at 8 layers an update costs about what one of the diffusion
default does, where 100 layers cost about 3.5 s each on one core."""
CONTINUOUS_NUM_STEPS = 1000
"""The T at which a continuous-time model is sampled and read by discrete tools (its bound
itself is T = ∞)."""
ADAPTIVE_LATENT_DIM = 8
"""The size of the adaptive guide's latent z when none is given: a few numbers per datum, enough
for the schedule to tell data apart (MuLAN's images use 32 for 3072 dimensions), at a cost
the encoder and the schedule's network of z keep small."""


def _data(value: Any, text: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"data must be a data set name or a .npy/.npz path, got {value!r}", fields=("data",)
        )
    return value


FIELDS = OptionSet(
    Option(
        "data",
        str,
        f"a built-in data set ({', '.join(dataset_names())}) or a .npy/.npz path",
        default="digits",
        parse=_data,
    ),
    Option(
        "num_levels",
        int,
        "integer levels 0..K-1 of a quantised .npy/.npz file (None: continuous)",
        low=2,
        nullable=True,
        off=None,
    ),
    Option("model", ModelKind, "the generative model", default=ModelKind.DIFFUSION),
    Option(
        "guide",
        GuideKind,
        "the guide q(x_1:T | x_0) (default: fixed for a diffusion model, learned for an hvae; "
        "adaptive: a learned noise process per dimension conditioned on a latent z)",
        run_default=AUTO,
    ),
    Option(
        "num_steps",
        int,
        f"T, the number of noising steps or latent layers (default: {DIFFUSION_NUM_STEPS} "
        f"for a diffusion model, {HVAE_NUM_STEPS} for an hvae, {CONTINUOUS_NUM_STEPS} for a "
        "continuous model, read by its discrete tools)",
        run_default=AUTO,
        low=1,
    ),
    Option("schedule", ScheduleKind, "noise schedule", default=ScheduleKind.LINEAR),
    Option("network", NetworkKind, "denoiser architecture", default=NetworkKind.AUTO),
    Option(
        "width",
        int,
        "U-Net base channels / MLP hidden width (None: 32 for a U-Net, 128 for an MLP)",
        low=1,
        nullable=True,
        off=None,
    ),
    Option("depth", int, "MLP residual blocks", default=3, low=1),
    Option(
        "dropout",
        float,
        "the denoiser's dropout probability while training (a regulariser for small data; "
        "evaluations run without it)",
        default=0.0,
        low=0.0,
        high=1.0,
        high_open=True,
    ),
    Option(
        "latent_dim",
        int,
        "size of each latent layer of an hvae (None: the data's dimension); size of the "
        f"latent z of guide adaptive (None: {ADAPTIVE_LATENT_DIM}; 0: a schedule per "
        "dimension without z)",
        low=0,
        nullable=True,
        off=None,
    ),
    Option(
        "guide_hidden",
        int,
        "hidden width of a learned guide (and of guide adaptive's encoder of z)",
        default=64,
        low=1,
    ),
    Option(
        "parameterization",
        Parameterization,
        "what the denoiser predicts",
        default=Parameterization.EPSILON,
    ),
    Option(
        "variance",
        ReverseVariance,
        "the reverse kernels' variance (learned_range: improved DDPM's)",
        default=ReverseVariance.LEARNED_RANGE,
    ),
    Option(
        "objective",
        Objective,
        "training objective (default: elbo for a guide with closed forms, trace_elbo for "
        "a learned guide)",
        run_default=AUTO,
    ),
    Option(
        "timesteps",
        TimestepKind,
        "timestep sampler of a timestep-sampled objective (None: importance-sampled)",
        nullable=True,
    ),
)
"""The identity fields of :class:`~pyrodiff.config.RunConfig`, in its order."""
