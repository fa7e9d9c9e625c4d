"""Guides q(x_{1:T} | x_0): the fixed forward chain and learned alternatives."""

from .forward import ChainOrder, ForwardGuide

__all__ = ["ChainOrder", "ForwardGuide"]
from .learned import GaussianFactor, GuideCovariance, GuideStructure, LearnedGuide  # noqa: E402
from .schedule import Endpoints, LearnedSchedule, LearnedScheduleGuide  # noqa: E402

__all__ += [
    "Endpoints",
    "GaussianFactor",
    "GuideCovariance",
    "GuideStructure",
    "LearnedGuide",
    "LearnedSchedule",
    "LearnedScheduleGuide",
]
