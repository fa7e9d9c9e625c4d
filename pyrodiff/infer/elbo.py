"""The diffusion ELBO: its per-step decomposition and a timestep-sampled unbiased estimator.

For a model p_θ(x_{0:T}) and a guide with closed-form marginals q(x_t | x_0) and posteriors
q(x_{t−1} | x_t, x_0) (the forward chain, or a learned schedule),

    ELBO(x_0) = E_q[log p_θ(x_0 | x_1)] − Σ_{t=2}^T E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))
                − KL(q(x_T | x_0) ‖ p(x_T)),

exactly the value Pyro's Trace_ELBO estimates from the literal chain (DDPM's L_0, L_{t−1}, L_T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..errors import ConfigError, DataError, ModelMismatchError
from ..gaussian import gaussian_kl, isotropic_gaussian_kl, sum_event
from ..gaussian import prior_kl as _gaussian_prior_kl
from ..guides.closed_forms import CLOSED_FORM_METHODS, has_closed_forms
from ..progress import progress_bar
from ..validation import check_data, check_pair
from .chunks import repeated_chunks
from .timesteps import TimestepSampler, UniformTimesteps

if TYPE_CHECKING:
    from .objectives import ScheduleObjective

__all__ = [
    "DiffusionELBO",
    "TimestepObjective",
    "ELBOTerms",
    "elbo_terms",
    "bits_per_dim",
    "step_terms",
]


def _check_diffusion_model(model) -> None:
    for attr in ("reverse_moments", "prior_loc", "prior_scale", "likelihood", "num_steps"):
        if not hasattr(model, attr):
            raise ModelMismatchError(
                f"this estimator needs a pyrodiff.Diffusion model (missing .{attr}); "
                f"got {type(model).__name__}"
            )


def _check_closed_form_guide(guide) -> None:
    if not has_closed_forms(guide):
        missing = [a for a in CLOSED_FORM_METHODS if not callable(getattr(guide, a, None))]
        raise ModelMismatchError(
            f"this estimator needs a guide with closed-form q(x_t | x_0) and q(x_(t-1) | x_t, x_0) "
            f"(ForwardGuide or a learned schedule); {type(guide).__name__} has no .{missing[0]}. "
            "Use Pyro's Trace_ELBO for other guides."
        )


def _continuous_time(model) -> bool:
    """Whether ``model`` is a continuous-time model (read through its log-SNR, not tables)."""
    return hasattr(model, "log_snr_and_slope")


def _check_closed_form_pair(model, guide) -> None:
    _check_diffusion_model(model)
    _check_closed_form_guide(guide)
    check_pair(model, guide)


def step_terms(
    model,
    guide,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    moments: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One-sample estimates of the per-step ELBO terms at per-datum timesteps ``t`` ∈ {1…T}.

    Returns, for each datum n, log p_θ(x_0 | x_1) if t_n = 1 and −KL(q(x_{t−1} | x_t, x_0) ‖
    p_θ(x_{t−1} | x_t)) otherwise, with x_t ~ q(x_t | x_0) drawn by reparameterisation (from
    ``noise`` if given). Each is unbiased for its term of the ELBO. Over a schedule per
    dimension the KL is the sum of the dimensions' one-dimensional KLs.

    ``moments``, if given, are (μ_θ, σ_t²) already computed at the x_t that ``noise`` gives
    (``noise`` is then required); objectives that need the terms with parts of the moments
    detached use it to evaluate one network call several ways.
    """
    if moments is not None and noise is None:
        raise DataError("step_terms: precomputed moments need the noise that produced x_t")
    loc, scale = guide.marginal_moments(x0, t)
    eps = torch.randn_like(x0) if noise is None else noise
    x_t = loc + scale * eps
    mean, var = model.reverse_moments(x_t, t) if moments is None else moments
    event_dim = x0.dim() - 1
    var_full = var.expand_as(x0)
    if model.num_steps < 2:
        return _reconstruction(model, x0, mean, var_full, event_dim)
    # the posterior is degenerate at t = 1 (β̃_1 = 0); there the KL is computed against the
    # proper posterior of t = 2 instead, a finite value (and gradient) that the final
    # torch.where discards in favour of the decoder term
    post_loc, post_scale = guide.posterior_moments(x0, x_t, t.clamp(min=2))
    post_var = post_scale**2
    # a schedule per dimension gives variances of the data's shape, which take the elementwise
    # branch: the isotropic form holds only for one variance shared by a datum's dimensions
    if _one_per_datum(var, x0) and _one_per_datum(post_var, x0):
        # fixed variances: a constant per step plus the mean's weighted squared error
        sq_dist = sum_event((post_loc - mean) ** 2, event_dim)
        num_dims = x0[0].numel()
        kl = isotropic_gaussian_kl(sq_dist, _per_datum(post_var), _per_datum(var), num_dims)
    else:
        kl = sum_event(gaussian_kl(post_loc, post_var, mean, var_full), event_dim)
    at_one = t == 1
    # with t ~ U{1…T} a training batch rarely holds t = 1; on the CPU knowing that is free,
    # elsewhere it would cost a device sync, so there the decoder is always evaluated
    if x0.device.type == "cpu" and not bool(at_one.any()):
        return -kl
    rec = _reconstruction(model, x0, mean, var_full, event_dim)
    return torch.where(at_one, rec, -kl)


def _one_per_datum(v: Tensor, x0: Tensor) -> bool:
    """Whether ``v`` holds one value per datum (or one for all), broadcast over the event."""
    return v.dim() == 0 or (v.dim() == x0.dim() and v.shape[1:].numel() == 1)


def _per_datum(v: Tensor) -> Tensor:
    return v.reshape(-1) if v.dim() else v


def _reconstruction(model, x0: Tensor, mean: Tensor, var_full: Tensor, event_dim: int) -> Tensor:
    """log p_θ(x_0 | x_1) per datum, at the decoder's location and variance
    (:meth:`~pyrodiff.likelihoods.Likelihood.reconstruction`)."""
    return model.likelihood.reconstruction(x0, mean, var_full.sqrt())


def prior_kl(model, guide, x0: Tensor) -> Tensor:
    """KL(q(x_T | x_0) ‖ p(x_T)) per datum, in closed form (DDPM's L_T;
    :func:`pyrodiff.gaussian.prior_kl`)."""
    loc, scale = guide.marginal_moments(x0, model.num_steps)
    return _gaussian_prior_kl(loc, scale, model.prior_loc.to(x0), model.prior_scale.to(x0))


@dataclass(frozen=True)
class ELBOTerms:
    """The per-datum ELBO, term by term (all in nats).

    Attributes:
        reconstruction: E_q log p_θ(x_0 | x_1), shape (N,)  (−L_0).
        diffusion: L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) for t = 2 … T,
            shape (N, T − 1); column ``t − 2`` holds step t.
        prior: L_T = KL(q(x_T | x_0) ‖ p(x_T)), shape (N,).
        num_dims: D, the number of dimensions of one datum.
    """

    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor
    num_dims: int

    @property
    def num_steps(self) -> int:
        return self.diffusion.shape[1] + 1

    @property
    def elbo(self) -> Tensor:
        """The ELBO per datum, shape (N,)."""
        return self.reconstruction - self.diffusion.sum(-1) - self.prior

    @property
    def per_step_loss(self) -> Tensor:
        """Losses indexed by the network's timestep t = 1 … T, shape (N, T): column 0 is
        −log p(x_0 | x_1) (L_0), column t − 1 is L_{t−1}. The prior term is separate."""
        return torch.cat([-self.reconstruction[:, None], self.diffusion], dim=1)

    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2) per datum."""
        return bits_per_dim(self.elbo, self.num_dims)

    def mean(self) -> dict[str, float | list[float]]:
        """Means over the data, as plain numbers (for logs and JSON)."""
        return {
            "elbo": self.elbo.mean().item(),
            "reconstruction": self.reconstruction.mean().item(),
            "prior": self.prior.mean().item(),
            "per_step_loss": self.per_step_loss.mean(0).tolist(),
        }


def bits_per_dim(elbo: Tensor | float, num_dims: int) -> Tensor | float:
    """Bits per dimension, −ELBO / (D ln 2). With a discretised likelihood this is the usual
    figure on the original integer scale; with a Gaussian one it is a density, not a mass."""
    if num_dims < 1:
        raise DataError(f"num_dims must be >= 1, got {num_dims}")
    return -elbo / (num_dims * math.log(2.0))


def elbo_terms(
    model,
    guide,
    x0: Tensor,
    batch_budget: int = 4096,
    requires_grad: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ELBOTerms:
    """Every term of the ELBO for each datum, each estimated with one draw x_t ~ q(x_t | x_0).

    The terms are unbiased and independent across t; their sum is an unbiased estimate of the
    ELBO with far less variance than a single-timestep estimate. Timesteps are evaluated in
    chunks so that at most ``batch_budget`` network inputs are alive at once, whatever T and N.
    Requires a guide with closed-form marginals (see :class:`DiffusionELBO`). ``progress``
    shows a tqdm bar over the timesteps on stderr.
    """
    _check_closed_form_pair(model, guide)
    check_data(x0, model.event_shape, model.likelihood, name="x0")
    N, T = x0.shape[0], model.num_steps
    out = []
    bar = progress_bar(T, "ELBO terms", "step", progress)
    with torch.set_grad_enabled(requires_grad), bar:
        # copy j of the batch is evaluated at step t = j + 1
        for first, size, xs in repeated_chunks(x0, T, batch_budget):
            ts = torch.arange(first + 1, first + size + 1, device=x0.device)
            t = ts.repeat_interleave(N)
            noise = None
            if generator is not None:
                # one draw per timestep, in t order, so the chunking never changes the result
                noise = torch.cat(
                    [
                        torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                        for _ in range(len(ts))
                    ]
                )
            out.append(step_terms(model, guide, xs, t, noise).reshape(len(ts), N))
            bar.update(len(ts))
        per_step = torch.cat(out, 0).T  # (N, T), column t−1 is step t
        prior = prior_kl(model, guide, x0)
    return ELBOTerms(
        reconstruction=per_step[:, 0],
        diffusion=-per_step[:, 1:],
        prior=prior,
        num_dims=math.prod(model.event_shape),
    )


class TimestepObjective(ELBO):
    """Base class of objectives that draw one timestep per datum from closed-form factors.

    It holds what they share: the data argument, the pair and data checks (values checked
    without a device synchronisation: on the CPU every call, on an accelerator when the loss is
    read), particles as repeated data, a :class:`TimestepSampler`, and Pyro's ``loss`` /
    ``loss_and_grads``. Subclasses define :meth:`per_datum_loss`; the loss is its sum over the
    batch divided by ``num_particles``, as Pyro's ELBOs sum over a plate.
    """

    def __init__(self, num_particles: int = 1, timesteps: TimestepSampler | None = None) -> None:
        super().__init__(num_particles=num_particles)
        if timesteps is not None and not isinstance(timesteps, TimestepSampler):
            raise ConfigError(
                f"timesteps must be a TimestepSampler, got {type(timesteps).__name__}"
            )
        self.timesteps = timesteps if timesteps is not None else UniformTimesteps()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} evaluates closed-form factors; it records no traces"
        )

    @staticmethod
    def _data(args, kwargs) -> Tensor:
        x0 = kwargs.get("x0", args[0] if args else None)
        if x0 is None:
            raise DataError("this objective needs the data: call it as loss(model, guide, x0)")
        return x0

    def _check_pair(self, model, guide) -> None:
        """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless this objective is correct
        for the pair: here a Diffusion and a guide with closed-form factors."""
        _check_closed_form_pair(model, guide)

    def _check_model(self, model) -> None:
        """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless ``model`` is the kind of
        model this objective evaluates."""
        _check_diffusion_model(model)

    def _check_guide(self, guide) -> None:
        """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless ``guide`` is a guide this
        objective evaluates in closed form (checked when a program's guide announces itself)."""
        _check_closed_form_guide(guide)

    @staticmethod
    def _is_pair(model, guide) -> bool:
        """Whether (model, guide) are a pyrodiff model and a guide module themselves, which are
        evaluated directly, rather than programs that call them."""
        is_model = hasattr(model, "reverse_moments") or hasattr(model, "log_snr_and_slope")
        return is_model and (guide is None or isinstance(guide, torch.nn.Module))

    def _prepare(self, model, guide, args, kwargs) -> Tensor:
        """The checked data, repeated ``num_particles`` times along the batch."""
        x0 = self._data(args, kwargs)
        self._check_pair(model, guide)
        on_cpu = x0.device.type == "cpu"
        check_data(x0, model.event_shape, model.likelihood, name="x0", values=on_cpu)
        if self.num_particles > 1:
            x0 = x0.repeat((self.num_particles,) + (1,) * (x0.dim() - 1))
        return x0

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:  # pragma: no cover
        """One estimate per (repeated) datum, shape (num_particles · N,)."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The loss as a tensor, without reading anything back from the data's device.

        Type, dtype and shape of ``x0`` are checked on every call. Its values (finite, in the
        likelihood's support) are checked here on the CPU, where that costs no synchronisation;
        on an accelerator they are checked where the loss is read anyway (:meth:`loss`,
        :meth:`loss_and_grads` raise :class:`~pyrodiff.errors.DataError` when a non-finite loss
        comes from bad data), and ``pyrodiff.train.fit`` checks its whole dataset once.
        """
        if not self._is_pair(model, guide):
            return self._program_loss(model, guide, args, kwargs)
        x0 = self._prepare(model, guide, args, kwargs)
        return self.per_datum_loss(model, guide, x0).sum() / self.num_particles

    def _program_loss(self, model, guide, args, kwargs) -> Tensor:
        if not self.takes_programs:
            self._check_pair(model, guide)  # names what is missing
            raise ModelMismatchError(
                f"{type(self).__name__} takes a pyrodiff model and guide themselves, not programs"
            )
        # imported here: the program path builds DiffusionPrior, which is built on this module
        from .programs import program_loss

        return program_loss(self, model, guide, args, kwargs)

    def _read(self, loss: Tensor, model, args, kwargs) -> float:
        value = loss.item()
        if not math.isfinite(value) and hasattr(model, "event_shape"):
            # the one place a value is read back anyway: say so if the data is to blame
            check_data(self._data(args, kwargs), model.event_shape, model.likelihood, name="x0")
        return value

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            loss = self.differentiable_loss(model, guide, *args, **kwargs)
        return self._read(loss, model, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:  # a program whose chains are all blocked has nothing to train
            loss.backward()
        return self._read(loss, model, args, kwargs)


class DiffusionELBO(TimestepObjective):
    """A timestep-sampled, unbiased estimator of the diffusion ELBO, as a Pyro ELBO.

    For each datum it draws t ~ π (uniform on {1…T} by default) and x_t ~ q(x_t | x_0) and
    returns −[KL_prior + w(t) · term_t] summed over the batch, where term_t is the one-sample
    estimate of :func:`step_terms` and w = 1/π(t). Its expectation is exactly −ELBO, the value
    Trace_ELBO estimates on the literal chain, but one step costs one network call per datum
    instead of T.

    Correct when the guide's factors have closed form (``guide.marginal``,
    ``guide.posterior``: :class:`~pyrodiff.ForwardGuide` and learned schedules) and the model
    is a :class:`~pyrodiff.Diffusion`; for other guides use Trace_ELBO. Use it as ``loss=`` in
    :class:`pyro.infer.SVI`, or ``DiffusionELBO()(model, guide)`` as an ``nn.Module``.

    It also takes programs that call such a pair: the pair wrapped by ``poutine.scale``,
    ``mask``, ``condition`` (on x_0), ``block`` (the whole chain), a plain function, or a user's
    model in which the Diffusion is a sub-program (a prior over a latent) with a guide program
    that runs the matching ForwardGuide. It then estimates what Trace_ELBO estimates on the
    same programs, at one network call per datum of each chain
    (:func:`pyrodiff.infer.programs.program_loss` says how, and which handlers it refuses).

    ``schedule_objective`` chooses what a learned schedule's interior is trained on
    (:class:`~pyrodiff.infer.ScheduleObjective`: the bound by default, or VDM's
    variance-minimising :attr:`~pyrodiff.infer.ScheduleObjective.VARIANCE`); the value of the
    loss is the bound either way.
    """

    takes_programs = True

    def __init__(
        self,
        num_particles: int = 1,
        timesteps: TimestepSampler | None = None,
        schedule_objective: ScheduleObjective | None = None,
    ) -> None:
        # the schedule-variance objective lives with the objectives, which build on this module
        from .objectives import ScheduleObjective

        super().__init__(num_particles=num_particles, timesteps=timesteps)
        if schedule_objective is None:
            schedule_objective = ScheduleObjective.BOUND
        if not isinstance(schedule_objective, ScheduleObjective):
            raise ConfigError(
                f"schedule_objective must be a ScheduleObjective, got {schedule_objective!r}"
            )
        self.schedule_objective = schedule_objective

    def _check_pair(self, model, guide) -> None:
        if _continuous_time(model):
            from .continuous import check_pair

            check_pair(model, guide)
            return
        super()._check_pair(model, guide)

    def _check_model(self, model) -> None:
        if not _continuous_time(model):
            super()._check_model(model)

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:
        """ℓ_n = KL_prior,n − w(t_n) · term_n, unbiased for −ELBO(x0_n). A continuous-time model
        (:class:`~pyrodiff.ContinuousDiffusion`, :class:`~pyrodiff.models.AdaptiveDiffusion`) is
        evaluated at its T = ``num_steps`` in closed form over its log-SNR
        (:func:`pyrodiff.infer.continuous.one_call_loss`)."""
        if _continuous_time(model):
            from .continuous import one_call_loss

            return one_call_loss(self, model, guide, x0, model.num_steps, self.schedule_objective)
        from .objectives import ScheduleVariance

        reroute = ScheduleVariance.of(self.schedule_objective, model, guide)
        t, weight = self.timesteps.sample(x0.shape[0], model.num_steps, x0.device)
        terms = step_terms(model, guide, x0, t)
        self.timesteps.update(t, terms.detach())
        sampled = -weight.to(terms.dtype) * terms
        loss = prior_kl(model, guide, x0) + sampled
        return loss if reroute is None else reroute.reroute(loss, sampled)
