"""A pyrodiff model as a distribution for a user's own Pyro model: the fast bound as log_prob.

LSGM's construction (Vahdat et al. 2021): a VAE whose latent z has a diffusion prior is trained
on E_q[log p(x | z) + ELBO_prior(z) − log q(z | x)], where ELBO_prior(z) ≤ log p_θ(z) is the
diffusion model's own bound on z. :class:`DiffusionPrior` makes that one line of Pyro,
``pyro.sample("z", DiffusionPrior(model))``: its ``log_prob`` is the one-network-call,
timestep-sampled estimate of ELBO_prior per datum, the same estimate (the same code) that
:class:`~pyrodiff.infer.DiffusionELBO` and :class:`~pyrodiff.infer.ContinuousELBO` minimise.
"""

from __future__ import annotations

import weakref

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.runtime import am_i_wrapped
from torch import Tensor

from ..errors import ConfigError
from ..guides import ForwardGuide
from ..modules import announce_parameters
from ..validation import check_data
from .continuous import ContinuousELBO
from .elbo import DiffusionELBO

__all__ = ["DiffusionPrior", "reverse_chain"]


_FORWARD_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each discrete model's own forward chain, built once: a distribution is built every run."""


def _forward_chain(model) -> ForwardGuide:
    chain = _FORWARD_CHAINS.get(model)
    if chain is None or chain.schedule is not model.schedule:
        chain = _FORWARD_CHAINS[model] = ForwardGuide(model.schedule)
    return chain


def _default_objective(model) -> DiffusionELBO | ContinuousELBO:
    if hasattr(model, "log_snr_and_slope"):
        return ContinuousELBO()
    return DiffusionELBO()


def _has_global_sites(model) -> bool:
    return any(m.__dict__.get("_pyro_samples") for m in model.modules())


def reverse_chain(model, num: int) -> Tensor:
    """``num`` draws x_0 ~ p_θ(x_0) by the reverse chain, outside any Pyro handler's sight: a
    :class:`~pyrodiff.Diffusion` runs its T kernels, a
    :class:`~pyrodiff.ContinuousDiffusion` those of ``model.discretize()`` (T = its
    ``num_steps``). Without gradients."""
    chain = model.discretize() if hasattr(model, "discretize") else model
    like = chain.prior_loc.to(torch.get_default_dtype())
    with torch.no_grad(), poutine.block():
        x = chain.prior(num, like).sample()
        for t in range(chain.num_steps, 0, -1):
            x = chain.reverse_kernel(x, t).sample()
    return x


class DiffusionPrior(TorchDistribution):
    """p_θ(x_0) of a pyrodiff model, as a Pyro distribution over one datum of its event shape.

    ``log_prob(x_0)`` is one draw of the unbiased one-call estimate of the model's ELBO per datum:
    for a :class:`~pyrodiff.Diffusion`, −ℓ of :meth:`DiffusionELBO.per_datum_loss
    <pyrodiff.infer.DiffusionELBO.per_datum_loss>` (one timestep t, one x_t ~ q(x_t | x_0), one
    network call), with ``guide``'s closed forms (the model's own forward chain unless given);
    for a :class:`~pyrodiff.ContinuousDiffusion`, the T = ∞ bound of
    :class:`~pyrodiff.infer.ContinuousELBO`. ``objective`` chooses the estimator's options (the
    timestep sampler); one draw per evaluation, whatever its ``num_particles``. ``sample()``
    runs the reverse chain (:func:`reverse_chain`, T network calls).

    When it is correct:

    - E[log_prob(x)] = ELBO_θ(x) ≤ log p_θ(x) for every x: log_prob is a stochastic *lower
      bound*, not a normalised density, and its gradients in θ and in x are unbiased for the
      ELBO's (t and ε are drawn independently of both).
    - In a model of your own, ``pyro.sample("z", DiffusionPrior(model))`` with any guide for z,
      under an ELBO that is linear in the model's log-densities (``Trace_ELBO``,
      ``TraceMeanField_ELBO``, ``TraceGraph_ELBO``, ``JitTrace_ELBO``, pyrodiff's bounds), gives
      an unbiased estimate of a lower bound on your evidence: ELBO_θ(z) replaces log p_θ(z) and
      is below it. Not under importance-weighted objectives (``RenyiELBO`` with α ≠ 1,
      ``TraceTMC_ELBO``, IWAE): they exponentiate log_prob, and E[exp(ℓ̂)] may exceed p_θ(z).
    - ``has_rsample`` is False: ``sample()`` carries no gradient. Let a guide draw z.
    - Built (or broadcast by a plate) inside a program's run, it records the model's (and the
      guide's) parameters as sites of that run, so ``SVI`` trains them even when nothing else
      in the program has parameters; give the model a ``name`` when the program holds another
      pyrodiff model. Point parameters only: a model
      whose submodules have ``PyroSample`` attributes (a Bayesian denoiser) is refused, since
      log_prob runs outside the model's run; call the model itself for those.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        model,
        guide=None,
        objective: DiffusionELBO | ContinuousELBO | None = None,
        batch_shape: tuple[int, ...] = (),
        validate_args: bool | None = None,
    ) -> None:
        objective = _default_objective(model) if objective is None else objective
        if not isinstance(objective, (DiffusionELBO, ContinuousELBO)):
            raise ConfigError(
                "DiffusionPrior's log_prob must be a bound: objective must be a DiffusionELBO or "
                f"a ContinuousELBO, got {type(objective).__name__}"
            )
        if guide is None and isinstance(objective, DiffusionELBO):
            guide = _forward_chain(model) if hasattr(model, "schedule") else None
        objective._check_pair(model, guide)
        if _has_global_sites(model):
            raise ConfigError(
                "DiffusionPrior needs point parameters: this model has PyroSample attributes "
                "(a Bayesian denoiser), which log_prob would draw afresh outside the model's run; "
                "call the model itself (its literal chain) for those"
            )
        self.model, self.guide, self.objective = model, guide, objective
        self._announced = self._announce()
        super().__init__(
            torch.Size(batch_shape), torch.Size(model.event_shape), validate_args=validate_args
        )

    def _announce(self) -> bool:
        """Record the parameters in the program's run, if one is running (see the class doc).

        Pyro's ELBOs differentiate only when a trace holds a parameter site, and the network
        runs after the run. Once the parameters are in the param store, one site per module
        marks the run as training them (the rest are recorded when log_prob runs, under SVI's
        parameter capture); recording every tensor again would cost, for a small network, a
        tenth of the update (measured with benchmarks/prior_step.py).
        """
        if not am_i_wrapped():
            return False
        store = pyro.get_param_store()
        for module in (self.model, self.guide):
            first = (
                next((p for p in module.parameters() if p.requires_grad), None) if module else None
            )
            if first is None:
                continue
            name = store.param_name(first)
            if name is None:
                announce_parameters(module)  # first run: names every tensor in the store
            else:
                pyro.param(name, first)
        return True

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> DiffusionPrior:
        # a plate broadcasts the distribution in the run that built it: checked and announced
        # once is enough, and the expanded copy is made without repeating either
        new = self._get_checked_instance(DiffusionPrior, _instance)
        new.model, new.guide, new.objective = self.model, self.guide, self.objective
        new._announced = self._announced or new._announce()
        TorchDistribution.__init__(
            new, torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """One draw of the one-call ELBO estimate per datum, shape ``value``'s batch shape
        broadcast with this distribution's."""
        event_dim = len(self.event_shape)
        batch = value.shape[: value.dim() - event_dim]
        x0 = value.reshape((-1,) + tuple(self.event_shape))
        on_cpu = x0.device.type == "cpu"
        check_data(x0, self.model.event_shape, self.model.likelihood, name="x_0", values=on_cpu)
        ell = self.objective.per_datum_loss(self.model, self.guide, x0)
        return (-ell).reshape(batch).expand(torch.broadcast_shapes(batch, self.batch_shape))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """x_0 ~ p_θ(x_0) by the reverse chain, shape ``sample_shape + batch_shape + event``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        x = reverse_chain(self.model, max(shape.numel(), 1))
        return x[: shape.numel()].reshape(shape + self.event_shape)
