"""The guide of a continuous-time diffusion model: the fixed forward process q(z_t | x)."""

from __future__ import annotations

from pyro.nn import PyroModule
from torch import Tensor

from ..errors import ModelMismatchError
from ..modules import data_plate, fast_bound_hook

__all__ = ["ContinuousForwardGuide"]


class ContinuousForwardGuide(PyroModule):
    """q(z_{[0,1]} | x) of a :class:`~pyrodiff.ContinuousDiffusion`: z_t = α_t x + σ_t ε.

    It has no parameters and nothing to choose: the model's own schedule fixes it, and
    :class:`~pyrodiff.infer.ContinuousELBO` evaluates it in closed form, so it draws no latents.
    It exists so that ``SVI(model, guide, ContinuousELBO())`` and training loops that move a
    guide to a device take the pair like any other. ``name`` is the name of the model it serves
    when :class:`~pyrodiff.infer.ContinuousELBO` runs a user's program holding both.

    Run by a sampling ELBO (``Trace_ELBO`` and the rest), a guide that draws nothing would leave
    the model's T latents to the model itself and the "bound" would be nonsense, so calling it
    outside :class:`~pyrodiff.infer.ContinuousELBO` raises an error naming the two valid pairs.
    At T steps the same process is ``ForwardGuide(model.discretize(T).schedule)``.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.name = name

    def forward(self, x0: Tensor | None = None, *args, **kwargs) -> None:
        hook = fast_bound_hook()
        if hook is None:
            raise ModelMismatchError(
                "ContinuousForwardGuide draws no latents: only pyrodiff.infer.ContinuousELBO "
                "evaluates it (in closed form). For a sampling ELBO such as Trace_ELBO use the "
                "chain at T steps: model.discretize(T) with "
                "ForwardGuide(model.discretize(T).schedule)"
            )
        size = None if x0 is None else x0.shape[0]
        with data_plate(self, size, "the guide's x0"):
            hook.guide(self, x0)
