"""Noise schedules: discrete β_1 … β_T chains and continuous log-SNR schedules γ(t).

A continuous schedule evaluated at T equal steps (``discretize(T)``) is a discrete
:class:`NoiseSchedule`, so every tool written for discrete chains takes it.
"""

from .continuous import (
    CosineLogSNR,
    Endpoints,
    LearnedLogSNR,
    LinearLogSNR,
    LogSNRSchedule,
    discrete_times,
)
from .discrete import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_alpha_bar,
    schedule_from_config,
)

__all__ = [
    "CosineLogSNR",
    "Endpoints",
    "LearnedLogSNR",
    "LinearLogSNR",
    "LogSNRSchedule",
    "NoiseSchedule",
    "cosine_schedule",
    "discrete_times",
    "linear_schedule",
    "schedule_from_alpha_bar",
    "schedule_from_config",
]
