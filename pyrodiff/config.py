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
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpoint import CONFIG_NAME
from .data.registry import dataset_names
from .errors import ConfigError
from .gaussian import Parameterization
from .models.diffusion import ReverseVariance
from .train.options import LRSchedule, Precision, default_warmup

__all__ = [
    "CONFIG_NAME",
    "CONFIG_VERSION",
    "Built",
    "GuideKind",
    "ModelKind",
    "NetworkKind",
    "Objective",
    "HVAE_NUM_STEPS",
    "RunConfig",
    "ScheduleKind",
    "TimestepKind",
    "build",
    "build_guide",
    "build_loss",
    "build_model",
    "build_schedule",
    "load_data",
    "parse_enum",
]


CONFIG_VERSION = 1
"""The version of the JSON layout this code writes; newer files are refused."""


class ModelKind(enum.Enum):
    """The generative model p_θ."""

    DIFFUSION = "diffusion"
    """:class:`~pyrodiff.Diffusion`: T Gaussian reverse kernels sharing one denoiser."""
    HVAE = "hvae"
    """:class:`~pyrodiff.models.HierarchicalVAE`: a Markovian hierarchical VAE with T latent
    layers of size ``latent_dim`` and its own learned guide
    (:class:`~pyrodiff.guides.HierarchicalVAEGuide`; ``guide`` must be LEARNED)."""
    CONTINUOUS = "continuous"
    """:class:`~pyrodiff.models.ContinuousDiffusion`: the T → ∞ limit, trained on its own bound
    (:class:`~pyrodiff.infer.ContinuousELBO`, one network call per datum) with a learned log-SNR
    schedule (ends on the bound, interior on the estimator's variance) and, for quantised data,
    Fourier features of the input; ``guide`` is the fixed forward process and ``objective``
    elbo. Its discrete tools (IWAE, PSIS, samplers) read it discretised at T = ``num_steps``."""


class GuideKind(enum.Enum):
    """The approximate posterior q(x_{1:T} | x_0)."""

    FIXED = "fixed"
    """the forward noising chain (:class:`~pyrodiff.ForwardGuide`), no parameters."""
    LEARNED = "learned"
    """an amortised Gaussian guide (:class:`~pyrodiff.guides.LearnedGuide`), trained with the
    model; needs a trace-based objective (Trace_ELBO or TraceMeanField_ELBO)."""
    LEARNED_SCHEDULE = "learned_schedule"
    """the forward chain over a learnable noise schedule
    (:class:`~pyrodiff.guides.LearnedScheduleGuide`)."""


class ScheduleKind(enum.Enum):
    """The forward chain's noise schedule."""

    LINEAR = "linear"
    """DDPM's linear β (:func:`~pyrodiff.linear_schedule`)."""
    COSINE = "cosine"
    """improved DDPM's cosine ᾱ (:func:`~pyrodiff.cosine_schedule`)."""


class NetworkKind(enum.Enum):
    """The denoiser architecture."""

    AUTO = "auto"
    """a U-Net for images (C, H, W), an MLP for vectors (D,)."""
    MLP = "mlp"
    """:class:`~pyrodiff.networks.MLPDenoiser` (vector data)."""
    UNET = "unet"
    """:class:`~pyrodiff.networks.UNetDenoiser` (image data with even H and W)."""


class Objective(enum.Enum):
    """What training minimises. The reported ELBO is always the true bound, whatever this is."""

    ELBO = "elbo"
    """the full bound, timestep-sampled (:class:`~pyrodiff.infer.DiffusionELBO`): one network
    call per datum; needs a guide with closed forms (FIXED or LEARNED_SCHEDULE)."""
    TRACE_ELBO = "trace_elbo"
    """Pyro's Trace_ELBO on the literal chain: the same bound at T network calls per datum;
    works with every guide."""
    TRACE_MEAN_FIELD_ELBO = "trace_mean_field_elbo"
    """Pyro's TraceMeanField_ELBO: analytic KL per site (valid for top-down guides)."""
    SIMPLE = "simple"
    """DDPM's L_simple (:class:`~pyrodiff.infer.objectives.SimpleLoss`): not a bound."""
    HYBRID = "hybrid"
    """improved DDPM's L_simple + λ L_vlb (:class:`~pyrodiff.infer.objectives.HybridLoss`)."""


class TimestepKind(enum.Enum):
    """How timestep-sampled objectives draw t (all unbiased for the bound)."""

    UNIFORM = "uniform"
    STRATIFIED = "stratified"
    LOW_DISCREPANCY = "low_discrepancy"
    ANTITHETIC = "antithetic"
    IMPORTANCE = "importance"
    """π(t) ∝ √E[L_t²], improved DDPM's loss-aware sampler."""


_TIMESTEP_OBJECTIVES = (Objective.ELBO, Objective.SIMPLE, Objective.HYBRID)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

DIFFUSION_NUM_STEPS = 100
"""T of a diffusion model when none is given (the digits default, docs/cli.md)."""
HVAE_NUM_STEPS = 8
"""Latent layers of an hvae when none is given. Its guide is read through the literal chain
(T network calls per datum): at 8 layers an update costs about what one of the diffusion
default does, where 100 layers cost about 3.5 s each on one core."""

CONTINUOUS_NUM_STEPS = 1000
"""The T at which a continuous-time model is sampled and read by discrete tools (its bound
itself is T = ∞)."""

CONTINUOUS_GAMMA_ENDS = (-13.3, 5.0)
"""γ(0), γ(1) where a continuous model's learned log-SNR schedule starts (VDM's): at −13.3 the
noise is far below one grey level of 8-bit data, at 5 the prior KL is negligible."""

FOURIER_EXPONENTS = (3, 4, 5)
"""Fourier features sin/cos(2^n π x) of quantised data for a continuous model: they resolve
the spacing of 17 grey levels on [−1, 1] (docs/continuous.md)."""

MIN_EVAL_EVERY = 100
"""The default evaluation interval is never shorter: one evaluation of the digits' validation
split at T = 100 costs about as much as 50 updates, so a short run evaluates only at its end."""
_AUTO_FIELDS = ("guide", "objective", "num_steps", "warmup_steps", "eval_every", "checkpoint_every")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class RunConfig:
    """The full configuration of one training run; ``config.json`` is its JSON form.

    Every field has a default: the defaults train a diffusion model on the digits in a few
    minutes on two CPU cores. Validation runs on construction; anything that needs the data
    (batch size against its size, the data shape against the network) is checked by
    :func:`build`.
    """

    # --- data ---
    data: str = field(
        default="digits",
        metadata=_help(f"a built-in data set ({', '.join(dataset_names())}) or a .npy/.npz path"),
    )
    num_levels: int | None = field(
        default=None,
        metadata=_help("integer levels 0..K-1 of a quantised .npy/.npz file (None: continuous)"),
    )
    # --- model and guide ---
    model: ModelKind = field(default=ModelKind.DIFFUSION, metadata=_help("the generative model"))
    guide: GuideKind | None = field(
        default=None,
        metadata=_help(
            "the guide q(x_1:T | x_0) (default: fixed for a diffusion model, learned for an hvae)",
            auto=True,
        ),
    )
    num_steps: int | None = field(
        default=None,
        metadata=_help(
            f"T, the number of noising steps or latent layers (default: {DIFFUSION_NUM_STEPS} "
            f"for a diffusion model, {HVAE_NUM_STEPS} for an hvae)",
            flag="--T",
            auto=True,
        ),
    )
    schedule: ScheduleKind = field(default=ScheduleKind.LINEAR, metadata=_help("noise schedule"))
    network: NetworkKind = field(default=NetworkKind.AUTO, metadata=_help("denoiser architecture"))
    width: int | None = field(
        default=None,
        metadata=_help(
            "U-Net base channels / MLP hidden width (None: 32 for a U-Net, 128 for an MLP)"
        ),
    )
    depth: int = field(default=3, metadata=_help("MLP residual blocks"))
    latent_dim: int | None = field(
        default=None,
        metadata=_help("size of each latent layer of an hvae (None: the data's dimension)"),
    )
    guide_hidden: int = field(default=64, metadata=_help("hidden width of a learned guide"))
    parameterization: Parameterization = field(
        default=Parameterization.EPSILON, metadata=_help("what the denoiser predicts")
    )
    variance: ReverseVariance = field(
        default=ReverseVariance.LEARNED_RANGE,
        metadata=_help("the reverse kernels' variance (learned_range: improved DDPM's)"),
    )
    # --- objective ---
    objective: Objective | None = field(
        default=None,
        metadata=_help(
            "training objective (default: elbo for a guide with closed forms, trace_elbo for "
            "a learned guide)",
            auto=True,
        ),
    )
    timesteps: TimestepKind | None = field(
        default=None,
        metadata=_help(
            "timestep sampler of a timestep-sampled objective (None: importance-sampled)"
        ),
    )
    # --- optimisation ---
    updates: int = field(default=1500, metadata=_help("optimizer updates"))
    batch_size: int = field(default=128, metadata=_help("data per update"))
    lr: float = field(default=2e-3, metadata=_help("peak learning rate"))
    lr_schedule: LRSchedule = field(
        default=LRSchedule.WARMUP_COSINE, metadata=_help("learning-rate schedule")
    )
    warmup_steps: int | None = field(
        default=None,
        metadata=_help(
            "linear warm-up updates (default: updates // 20, as fit's; 0: none)", auto=True, off=0
        ),
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    grad_clip: float | None = field(
        default=1.0, metadata=_help("clip the gradient norm at this value (None: no clipping)")
    )
    ema_decay: float | None = field(
        default=0.995,
        metadata=_help("EMA decay of the parameters, used for evaluation (None: no EMA)"),
    )
    seed: int = field(default=0, metadata=_help("random seed"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    precision: Precision = field(default=Precision.FP32, metadata=_help("loss arithmetic"))
    eval_every: int | None = field(
        default=None,
        metadata=_help(
            f"validation-split evaluation every N updates (default: updates // 5, at least "
            f"{MIN_EVAL_EVERY}; 0: only at the end); the test split is evaluated once, at the end",
            auto=True,
            off=0,
        ),
    )
    eval_batch_budget: int = field(
        default=4096, metadata=_help("network inputs alive at once during evaluation")
    )
    checkpoint_every: int | None = field(
        default=None,
        metadata=_help(
            "checkpoint every N updates (default: updates // 10; 0: only at the end)",
            auto=True,
            off=0,
        ),
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        # fields left unset take values that fit the rest; which ones did is remembered so that
        # replace() can choose them again and the command line can say what it chose
        auto = tuple(name for name in _AUTO_FIELDS if getattr(self, name) is None)
        object.__setattr__(self, "_auto", auto)
        for name, value in self._chosen().items():
            object.__setattr__(self, name, value)
        self._validate()

    def _chosen(self) -> dict[str, Any]:
        """The values of the unset fields, in an order where each sees the ones it depends on."""
        chosen: dict[str, Any] = {}
        hvae = self.model is ModelKind.HVAE
        continuous = self.model is ModelKind.CONTINUOUS
        if "guide" in self._auto:
            chosen["guide"] = GuideKind.LEARNED if hvae else GuideKind.FIXED
        guide = chosen.get("guide", self.guide)
        if "objective" in self._auto:
            # the amortised guides have no closed forms: they need the literal chain
            traced = hvae or guide is GuideKind.LEARNED
            chosen["objective"] = Objective.TRACE_ELBO if traced else Objective.ELBO
        if "num_steps" in self._auto:
            chosen["num_steps"] = (
                HVAE_NUM_STEPS
                if hvae
                else CONTINUOUS_NUM_STEPS
                if continuous
                else DIFFUSION_NUM_STEPS
            )
        if "warmup_steps" in self._auto:
            chosen["warmup_steps"] = default_warmup(self.lr_schedule, self.updates)
        if "eval_every" in self._auto:
            chosen["eval_every"] = max(MIN_EVAL_EVERY, self.updates // 5)
        if "checkpoint_every" in self._auto:
            chosen["checkpoint_every"] = max(1, self.updates // 10)
        return chosen

    @property
    def chosen_fields(self) -> tuple[str, ...]:
        """The fields that were not given and took a value fitting the others (``guide``,
        ``objective``, ``num_steps``, ``warmup_steps``, ``eval_every``, ``checkpoint_every``)."""
        return self._auto

    def _validate(self) -> None:
        if not self.data.strip():
            raise ConfigError(
                "data is empty; expected a data set name or a .npy/.npz path", fields=("data",)
            )
        _at_least("num_steps", self.num_steps, 1)
        for name in ("depth", "guide_hidden", "updates", "batch_size", "eval_batch_budget"):
            _at_least(name, getattr(self, name), 1)
        _at_least("warmup_steps", self.warmup_steps, 0)
        for name in ("width", "latent_dim"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        for name in ("eval_every", "checkpoint_every"):
            _at_least(name, getattr(self, name), 0)
        if self.num_levels is not None:
            _at_least("num_levels", self.num_levels, 2)
        _positive("lr", self.lr)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}",
                fields=("weight_decay",),
            )
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"ema_decay must lie in [0, 1), got {self.ema_decay!r}", fields=("ema_decay",)
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}", fields=("seed",))
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(
                f"unknown device {self.device!r}; expected auto, cpu, cuda or cuda:N",
                fields=("device",),
            )
        if self.warmup_steps >= self.updates and self.lr_schedule is LRSchedule.WARMUP_COSINE:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than updates "
                f"({self.updates}) for the warmup_cosine schedule",
                fields=("warmup_steps", "updates"),
            )
        self._validate_combination()

    def _validate_combination(self) -> None:
        from .guides import ForwardGuide, LearnedGuide, LearnedScheduleGuide, has_closed_forms

        guide_class = {
            GuideKind.FIXED: ForwardGuide,
            GuideKind.LEARNED: LearnedGuide,
            GuideKind.LEARNED_SCHEDULE: LearnedScheduleGuide,
        }[self.guide]
        closed = has_closed_forms(guide_class)
        if self.model is ModelKind.CONTINUOUS:
            if self.guide is not GuideKind.FIXED:
                raise ConfigError(
                    f"model continuous learns its schedule inside the model and needs guide "
                    f"fixed (the forward process), got guide {self.guide.value}",
                    fields=("guide",),
                )
            if self.objective is not Objective.ELBO:
                raise ConfigError(
                    f"model continuous trains on its T = ∞ bound, objective elbo, "
                    f"got {self.objective.value}",
                    fields=("objective",),
                )
            if self.num_steps < 2:
                raise ConfigError(
                    f"model continuous is read at T >= 2 steps, got {self.num_steps}",
                    fields=("num_steps",),
                )
        if self.model is ModelKind.HVAE:
            if self.guide is not GuideKind.LEARNED:
                raise ConfigError(
                    f"model hvae needs guide learned (its latents are not a noising chain), "
                    f"got guide {self.guide.value}"
                )
            if self.objective not in (Objective.TRACE_ELBO, Objective.TRACE_MEAN_FIELD_ELBO):
                raise ConfigError(
                    f"model hvae trains with objective trace_elbo or trace_mean_field_elbo, "
                    f"got {self.objective.value}"
                )
        elif self.objective in _TIMESTEP_OBJECTIVES and not closed:
            raise ConfigError(
                f"objective {self.objective.value} needs a guide with closed-form marginals "
                f"(fixed or learned_schedule), got guide {self.guide.value}; "
                "use objective trace_elbo or trace_mean_field_elbo with a learned guide"
            )
        if self.timesteps is not None and self.objective not in _TIMESTEP_OBJECTIVES:
            raise ConfigError(
                f"timesteps {self.timesteps.value} applies to the objectives "
                f"{', '.join(o.value for o in _TIMESTEP_OBJECTIVES)}, not {self.objective.value}"
            )
        if (
            self.objective in (Objective.SIMPLE, Objective.HYBRID)
            and self.guide is not GuideKind.FIXED
        ):
            raise ConfigError(
                f"objective {self.objective.value} weights the forward chain's own terms and needs "
                f"guide fixed, got {self.guide.value}"
            )
        if (
            self.objective is Objective.HYBRID
            and self.variance is not ReverseVariance.LEARNED_RANGE
        ):
            raise ConfigError(
                "objective hybrid trains the reverse variance and needs variance learned_range, "
                f"got {self.variance.value}"
            )

    def fit_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pyrodiff.train.fit` that this configuration fixes
        (all but ``checkpoint_every``, which needs the caller's ``run_dir``: see
        :meth:`checkpoint_options`)."""
        return {
            "updates": self.updates,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "lr_schedule": self.lr_schedule,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "ema_decay": self.ema_decay,
            "seed": self.seed,
            "device": self.device,
            "precision": self.precision,
            "eval_every": self.eval_every or None,
            "eval_batch_budget": self.eval_batch_budget,
        }

    def checkpoint_options(self, run_dir: str | Path) -> dict[str, Any]:
        """``run_dir`` and ``checkpoint_every`` for :func:`pyrodiff.train.fit` (0: at the end only)."""
        return {"run_dir": run_dir, "checkpoint_every": self.checkpoint_every or None}

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums by their value), plus the layout version."""
        out: dict[str, Any] = {"config_version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """The configuration as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_dict`; unknown keys and newer layouts raise ConfigError.
        Keys left out take their defaults."""
        if not isinstance(values, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(values).__name__}")
        values = dict(values)
        version = values.pop("config_version", CONFIG_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"config_version must be an integer >= 1, got {version!r}")
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"the configuration has config_version {version}, newer than the "
                f"{CONFIG_VERSION} this pyrodiff reads: upgrade pyrodiff"
            )
        if "steps" in values:
            if "updates" in values:
                raise ConfigError(
                    "the configuration gives both 'steps' and 'updates'; keep 'updates' "
                    "('steps' is its old name)"
                )
            warnings.warn(
                "the configuration key 'steps' is deprecated; it is now 'updates'",
                DeprecationWarning,
                stacklevel=2,
            )
            values["updates"] = values.pop("steps")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, source: str | Path) -> RunConfig:
        """Read a configuration from JSON text or from a file (a path, or a run folder)."""
        text = source
        if isinstance(source, Path) or not str(source).lstrip().startswith("{"):
            path = Path(source)
            if path.is_dir():
                path = path / CONFIG_NAME
            if not path.is_file():
                raise ConfigError(f"no configuration at {path}: expected a {CONFIG_NAME} file")
            text = path.read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the configuration is not valid JSON: {exc}") from None
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated like a new one). Fields that were not
        given are chosen again to fit the changes: ``RunConfig().replace(model="hvae")``
        has a learned guide, and ``replace(updates=20)`` a warm-up of one update."""
        kept = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in self._auto
        }
        return type(self)(**{**kept, **changes})


# --- coercion and checks ------------------------------------------------------------------------


def parse_enum(enum_cls: type[enum.Enum], value: Any, what: str = "") -> enum.Enum:
    """``value`` as a member of ``enum_cls``: a member, its value or its name (any case, '-' or
    '_'). Anything else raises ConfigError listing the valid values."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        for member in enum_cls:
            if key in (str(member.value).lower(), member.name.lower()):
                return member
    valid = ", ".join(str(m.value) for m in enum_cls)
    raise ConfigError(f"unknown {what or enum_cls.__name__} {value!r}; expected one of {valid}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be set (it cannot be null)", fields=(name,))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return parse_enum(hint, value, name)
        except ConfigError as exc:
            raise ConfigError(str(exc), fields=(name,)) from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}", fields=(name,))
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}", fields=(name,))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}", fields=(name,))
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}", fields=(name,))
        return value
    return value  # pragma: no cover - every field's type is handled above


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value}", fields=(name,))


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}", fields=(name,))


# --- builders -----------------------------------------------------------------------------------


class Built(NamedTuple):
    """What :func:`build` returns; unpacks as ``model, guide, dataset, loss``."""

    model: nn.Module
    guide: nn.Module
    dataset: Any
    loss: Any


def load_data(config: RunConfig, dtype=None):
    """The data set named by ``config.data`` (:func:`pyrodiff.data.get_dataset`)."""
    from .data import get_dataset

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if config.num_levels is not None:
        if not config.data.lower().endswith((".npy", ".npz")):
            raise ConfigError(
                f"num_levels applies to a .npy/.npz file, not the built-in data set {config.data!r}",
                fields=("num_levels",),
            )
        kwargs["num_levels"] = config.num_levels
    return get_dataset(config.data, **kwargs)


def build_schedule(config: RunConfig):
    """The forward chain's :class:`~pyrodiff.NoiseSchedule` with T = ``config.num_steps``."""
    from .schedules import cosine_schedule, linear_schedule

    if config.schedule is ScheduleKind.COSINE:
        return cosine_schedule(config.num_steps)
    return linear_schedule(config.num_steps)


def build_denoiser(
    config: RunConfig, event_shape: tuple[int, ...], fourier_exponents: tuple[int, ...] = ()
) -> nn.Module:
    """The denoiser for data of shape ``event_shape``; twice the outputs for a learned variance
    (discrete models only); ``fourier_exponents`` adds Fourier features of its input."""
    from .networks import MLPDenoiser, UNetDenoiser

    kind = config.network
    if kind is NetworkKind.AUTO:
        kind = NetworkKind.UNET if len(event_shape) == 3 else NetworkKind.MLP
    doubled = (
        config.variance is ReverseVariance.LEARNED_RANGE
        and config.model is not ModelKind.CONTINUOUS
    )
    if kind is NetworkKind.UNET:
        if len(event_shape) != 3:
            raise ConfigError(
                f"network unet needs image data shaped (C, H, W), got data of shape {event_shape}"
            )
        c, h, w = event_shape
        return UNetDenoiser(
            channels=c,
            image_size=(h, w),
            base=config.width or 32,
            out_channels=2 * c if doubled else c,
            fourier_exponents=fourier_exponents,
        )
    if len(event_shape) != 1:
        raise ConfigError(
            f"network mlp needs vector data shaped (D,), got data of shape {event_shape}; "
            "use network unet for images"
        )
    (d,) = event_shape
    return MLPDenoiser(
        d,
        hidden=config.width or 128,
        depth=config.depth,
        out_dim=2 * d if doubled else None,
        fourier_exponents=fourier_exponents,
    )


def build_model(config: RunConfig, dataset) -> nn.Module:
    """The generative model for ``dataset`` (its shape and its likelihood)."""
    if config.model is ModelKind.HVAE:
        from .models import HierarchicalVAE

        size = config.latent_dim or math.prod(dataset.event_shape)
        return HierarchicalVAE(
            dataset.event_shape,
            latent_dims=(size,) * config.num_steps,
            likelihood=dataset.likelihood(),
            hidden=config.width or 128,
        )
    if config.model is ModelKind.CONTINUOUS:
        from .models import ContinuousDiffusion
        from .schedules import Endpoints, LearnedLogSNR

        quantised = dataset.num_levels is not None
        return ContinuousDiffusion(
            build_denoiser(config, dataset.event_shape, FOURIER_EXPONENTS if quantised else ()),
            LearnedLogSNR(*CONTINUOUS_GAMMA_ENDS, endpoints=Endpoints.LEARNED),
            likelihood=dataset.likelihood(),
            parameterization=config.parameterization,
            event_shape=dataset.event_shape,
            num_steps=config.num_steps,
        )
    from .models import Diffusion

    return Diffusion(
        build_denoiser(config, dataset.event_shape),
        build_schedule(config),
        likelihood=dataset.likelihood(),
        parameterization=config.parameterization,
        variance=config.variance,
        event_shape=dataset.event_shape,
    )


def build_guide(config: RunConfig, model: nn.Module) -> nn.Module:
    """The guide for ``model``: the forward chain over the model's own schedule, a learned
    schedule starting from it, or an amortised learned guide."""
    from .guides import ForwardGuide

    if config.model is ModelKind.HVAE:
        from .guides import HierarchicalVAEGuide

        return HierarchicalVAEGuide(model, hidden=config.guide_hidden)
    if config.model is ModelKind.CONTINUOUS:
        from .guides import ContinuousForwardGuide

        return ContinuousForwardGuide()
    if config.guide is GuideKind.FIXED:
        return ForwardGuide(model.schedule)
    if config.guide is GuideKind.LEARNED_SCHEDULE:
        from .guides.schedule import LearnedScheduleGuide

        return LearnedScheduleGuide(model.schedule)
    from .guides.learned import LearnedGuide

    return LearnedGuide(model, hidden=config.guide_hidden)


def build_timesteps(config: RunConfig):
    """The timestep sampler of a timestep-sampled objective."""
    from .infer import timesteps as ts

    classes = {
        TimestepKind.UNIFORM: ts.UniformTimesteps,
        TimestepKind.STRATIFIED: ts.StratifiedTimesteps,
        TimestepKind.LOW_DISCREPANCY: ts.LowDiscrepancyTimesteps,
        TimestepKind.ANTITHETIC: ts.AntitheticTimesteps,
        TimestepKind.IMPORTANCE: ts.ImportanceTimesteps,
    }
    # importance-sampled t measured best on the digits (docs/objectives.md)
    return classes[config.timesteps or TimestepKind.IMPORTANCE]()


def build_loss(config: RunConfig):
    """The Pyro objective named by ``config.objective``."""
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    if config.objective is Objective.TRACE_ELBO:
        return Trace_ELBO()
    if config.objective is Objective.TRACE_MEAN_FIELD_ELBO:
        return TraceMeanField_ELBO()
    if config.model is ModelKind.CONTINUOUS:
        from .infer import ContinuousELBO, ScheduleObjective
        from .infer.timesteps import LowDiscrepancyTimesteps

        # low-discrepancy t as VDM; the schedule's interior minimises the estimator's variance
        sampler = build_timesteps(config) if config.timesteps else LowDiscrepancyTimesteps()
        return ContinuousELBO(timesteps=sampler, schedule_objective=ScheduleObjective.VARIANCE)
    timesteps = build_timesteps(config)
    if config.objective is Objective.ELBO:
        from .infer import DiffusionELBO

        return DiffusionELBO(timesteps=timesteps)
    from .infer.objectives import HybridLoss, SimpleLoss

    if config.objective is Objective.SIMPLE:
        return SimpleLoss(timesteps=timesteps)
    return HybridLoss(timesteps=timesteps)


def build(config: RunConfig, dataset=None, dtype=None) -> Built:
    """Construct ``(model, guide, dataset, loss)`` from ``config``.

    Loads the data (unless ``dataset`` is given), checks it against the configuration (the
    batch size must not exceed the training set) and builds the model on the data's shape and
    likelihood. Raises ConfigError / DataError, before anything is trained or written.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"build needs a RunConfig, got {type(config).__name__}")
    if dataset is None:
        dataset = load_data(config, dtype=dtype)
    n_train = dataset.train.shape[0]
    if config.batch_size > n_train:
        from .errors import DataError

        raise DataError(
            f"batch_size {config.batch_size} is larger than the {n_train} training data of "
            f"{dataset.name!r}; expected batch_size <= {n_train}",
            fields=("batch_size",),
        )
    # the initial weights are a function of the configuration (its seed), so config.json is
    # enough to rerun a run; the caller's random stream is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config, dataset)
        guide = build_guide(config, model)
    return Built(model, guide, dataset, build_loss(config))
