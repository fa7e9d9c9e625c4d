"""Guides q(x_{1:T} | x_0): the fixed forward chain and learned alternatives."""

from .forward import ChainOrder, ForwardGuide

__all__ = ["ChainOrder", "ForwardGuide"]
from .learned import (  # noqa: E402
    GaussianFactor,
    GuideCovariance,
    GuideStructure,
    HierarchicalVAEGuide,
    LearnedGuide,
)
from .schedule import Endpoints, LearnedSchedule, LearnedScheduleGuide  # noqa: E402

__all__ += [
    "Endpoints",
    "GaussianFactor",
    "GuideCovariance",
    "GuideStructure",
    "HierarchicalVAEGuide",
    "LearnedGuide",
    "LearnedSchedule",
    "LearnedScheduleGuide",
]
