"""The guide of a continuous-time diffusion model: the fixed forward process q(z_t | x)."""

from __future__ import annotations

from pyro.nn import PyroModule

__all__ = ["ContinuousForwardGuide"]


class ContinuousForwardGuide(PyroModule):
    """q(z_{[0,1]} | x) of a :class:`~pyrodiff.ContinuousDiffusion`: z_t = α_t x + σ_t ε.

    It has no parameters and nothing to choose: the model's own schedule fixes it, and
    :class:`~pyrodiff.infer.ContinuousELBO` evaluates it in closed form. As a Pyro program it
    therefore draws nothing; it exists so that ``SVI(model, guide, …)`` and training loops that
    move a guide to a device take the pair like any other. At T steps the same process is
    ``ForwardGuide(model.discretize(T).schedule)``.
    """

    def forward(self, *args, **kwargs) -> None:
        return None
