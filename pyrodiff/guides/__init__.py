"""Guides q(x_{1:T} | x_0): the fixed forward chain and learned alternatives."""

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
    "ChainOrder",
    "ContinuousForwardGuide",
    "Endpoints",
    "ForwardGuide",
    "GaussianFactor",
    "GuideCovariance",
    "GuideStructure",
    "HierarchicalVAEGuide",
    "LearnedGuide",
    "LearnedSchedule",
    "LearnedScheduleGuide",
    "has_closed_forms",
]
