"""Guides q(x_{1:T} | x_0): the fixed forward chain and learned alternatives."""

from .adaptive import AdaptiveNoiseGuide, GaussianEncoder
from .closed_forms import has_closed_forms
from .continuous import ContinuousForwardGuide
from .forward import ChainOrder, ForwardGuide
from .learned import (
    GaussianFactor,
    GuideCovariance,
    GuideStructure,
    HierarchicalVAEGuide,
    LearnedGuide,
)
from .schedule import Endpoints, LearnedSchedule, LearnedScheduleGuide

__all__ = [
    "AdaptiveNoiseGuide",
    "ChainOrder",
    "ContinuousForwardGuide",
    "Endpoints",
    "ForwardGuide",
    "GaussianEncoder",
    "GaussianFactor",
    "GuideCovariance",
    "GuideStructure",
    "HierarchicalVAEGuide",
    "LearnedGuide",
    "LearnedSchedule",
    "LearnedScheduleGuide",
    "has_closed_forms",
]
