"""The fixed guide of a diffusion model: the forward noising chain q(x_{1:T} | x_0)."""

from __future__ import annotations

import enum

import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule
from torch import Tensor

from ..errors import DataError
from ..gaussian import (
    q_marginal,
    q_marginal_moments,
    q_posterior,
    q_posterior_moments,
    q_step,
)
from ..modules import (
    batch_size_argument,
    child,
    data_plate,
    fast_bound_hook,
    pyro_method,
    site_name,
)
from ..schedules import NoiseSchedule

__all__ = ["ChainOrder", "ForwardGuide"]


class ChainOrder(enum.Enum):
    """The order in which the guide draws the same joint q(x_{1:T} | x_0)."""

    TOP_DOWN = "top_down"
    """x_T ~ q(x_T | x_0), then x_{t−1} ~ q(x_{t−1} | x_t, x_0) for t = T … 2. Site by site this
    matches the model's factorisation, so TraceMeanField_ELBO's analytic KL at site x_{t−1} is
    exactly DDPM's L_{t−1}. Use this one."""
    BOTTOM_UP = "bottom_up"
    """x_1 ~ q(x_1 | x_0), then x_t ~ q(x_t | x_{t−1}): the textbook forward chain. Trace_ELBO gives
    the same ELBO, but TraceMeanField_ELBO does not: it pairs q(x_{t−1} | x_{t−2}) with
    p_θ(x_{t−1} | x_t) as if the sites were independent, and returns a wrong value. Kept as an
    illustration."""


class ForwardGuide(PyroModule):
    """q(x_{1:T} | x_0), the parameter-free forward chain, as a Pyro guide.

    It has no parameters: training the pair with it moves only p_θ. Besides being a Pyro
    program it exposes the closed forms that timestep-sampled estimators
    (:class:`~pyrodiff.infer.DiffusionELBO`) use: :meth:`marginal` q(x_t | x_0) and
    :meth:`posterior` q(x_{t−1} | x_t, x_0), and their moments as tensors.

    As a sub-program it follows :class:`~pyrodiff.Diffusion`: ``name`` prefixes its sites (give
    it the name of the model it serves), it joins an enclosing plate at the rightmost batch
    dimension, and it runs on an x_0 that a user's guide drew, particle dimensions included
    when it knows the data's ``event_shape`` (:meth:`for_model` gives it the model's name and
    event shape); without it, x_0 is read as (batch, *event).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        order: ChainOrder = ChainOrder.TOP_DOWN,
        name: str = "",
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(name)
        self.name = name
        if not isinstance(order, ChainOrder):
            raise TypeError(f"order must be a ChainOrder, got {order!r}")
        self.schedule = schedule
        self.order = order
        if event_shape is not None:
            self.event_shape = tuple(int(s) for s in event_shape)

    @classmethod
    def for_model(cls, model) -> ForwardGuide:
        """The forward chain of ``model``'s schedule, under the model's name and with its event
        shape: the guide whose sites are the model's wherever the model sits."""
        return cls(model.schedule, name=model.name, event_shape=tuple(model.event_shape))

    @property
    def num_steps(self) -> int:
        return self._modules["schedule"].num_steps

    @pyro_method
    def marginal_moments(self, x0: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """(mean, standard deviation) of q(x_t | x_0); the standard deviation broadcasts over
        ``x0``. The closed form the timestep-sampled estimators read (no distribution object)."""
        return q_marginal_moments(child(self, "schedule"), x0, t)

    @pyro_method
    def posterior_moments(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """(mean, standard deviation) of q(x_{t−1} | x_t, x_0) (t ≥ 2), as :meth:`marginal_moments`."""
        return q_posterior_moments(child(self, "schedule"), x0, x_t, t)

    @pyro_method
    def marginal(self, x0: Tensor, t: int | Tensor) -> dist.Normal:
        """q(x_t | x_0), elementwise Normal."""
        return q_marginal(child(self, "schedule"), x0, t)

    @pyro_method
    def posterior(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> dist.Normal:
        """q(x_{t−1} | x_t, x_0), elementwise Normal (t ≥ 2)."""
        return q_posterior(child(self, "schedule"), x0, x_t, t)

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> None:
        # the model's signature; the data plate's size is x0's, so batch_size is not read
        batch_size_argument(batch_size, num_samples)
        if x0 is None:
            raise DataError("the forward-chain guide needs the data x0: it is q(x_{1:T} | x_0)")
        sched = self.schedule
        T = sched.num_steps
        shape = getattr(self, "event_shape", None)
        event_dim = x0.dim() - 1 if shape is None else len(shape)
        size = x0.shape[x0.dim() - event_dim - 1]
        hook = fast_bound_hook()
        with data_plate(self, size, "the guide's x0"):
            if hook is not None:
                hook.guide(self, x0)
            elif self.order is ChainOrder.TOP_DOWN:
                x = pyro.sample(
                    site_name(self, f"x_{T}"), q_marginal(sched, x0, T).to_event(event_dim)
                )
                for t in range(T, 1, -1):
                    q = q_posterior(sched, x0, x, t).to_event(event_dim)
                    x = pyro.sample(site_name(self, f"x_{t - 1}"), q)
            else:
                x = x0
                for t in range(1, T + 1):
                    x = pyro.sample(
                        site_name(self, f"x_{t}"), q_step(sched, x, t).to_event(event_dim)
                    )
