"""Learned guides q_φ(x_{1:T} | x_0): with one, a diffusion model becomes a hierarchical VAE.

Two factorisations of the same amortised Gaussian family are offered (:class:`GuideStructure`).
Every factor is a Gaussian whose mean is a residual around the matching factor of the forward
chain plus a per-step affine map of the factor's inputs plus a small shared network with a time
embedding; its output layers start at zero, so a fresh guide *is* the forward chain and training
starts from :class:`~pyrodiff.ForwardGuide`'s bound.
"""

from __future__ import annotations

import enum
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelMismatchError
from ..gaussian import q_marginal, q_posterior, q_step
from ..modules import batch_size_argument, data_plate, fast_bound_hook, site_name
from ..networks import TimeEmbedding
from ..schedules import NoiseSchedule
from ..validation import check_pair

__all__ = [
    "GuideStructure",
    "GuideCovariance",
    "GaussianFactor",
    "LearnedGuide",
    "HierarchicalVAEGuide",
]


class GuideStructure(enum.Enum):
    """Which conditionals the guide is made of, and the order its sites are drawn in."""

    TOP_DOWN = "top_down"
    """q_φ(x_T | x_0) Π_{t=T}^{2} q_φ(x_{t−1} | x_t, x_0): ladder-style, the factorisation of the
    forward chain's posterior form and of the model. Sites are drawn x_T … x_1, every model
    factor p_θ(x_{t−1} | x_t) conditions on a site drawn *before* x_{t−1}, so TraceMeanField_ELBO's
    analytic per-site KL is valid (and is DDPM's L_{t−1} when φ is at its start)."""
    BOTTOM_UP_MARKOV = "bottom_up_markov"
    """q_φ(x_1 | x_0) Π_{t=2}^{T} q_φ(x_t | x_{t−1}): the Markovian HVAE encoder. Sites are drawn
    x_1 … x_T, so the model factor p_θ(x_{t−1} | x_t) conditions on a site drawn *after* x_{t−1}:
    TraceMeanField_ELBO's analytic KL at x_{t−1} is then not the expectation it replaces and its
    value is wrong. Use Trace_ELBO with this structure."""


class GuideCovariance(enum.Enum):
    """The covariance of each Gaussian factor."""

    DIAGONAL = "diagonal"
    """diag(σ_φ(inputs, t)²): elementwise scales that depend on the inputs (any data shape)."""
    FULL = "full"
    """L_t L_tᵀ with a free lower-triangular L_t per step, not depending on the inputs (vector
    data only). With it the family contains the exact posterior of every linear-Gaussian model,
    whose posterior covariances do not depend on the data."""


class GaussianFactor(nn.Module):
    """The amortised Gaussian N(m, S) of one guide factor at step index k ∈ {1 … K}.

    m = base_loc + W_k a + V_k b + c_k + h_φ(a, b, k), and either (DIAGONAL)
    S = diag(base_scale · exp(r_k + 4 tanh(g_φ(a, b, k) / 4)))² or (FULL) S = L_k L_kᵀ with
    diag(L_k) = base_scale · exp(r_k) and a free strictly lower part. a and b are the
    flattened inputs (the previous latent and, for top-down factors, x_0), h and g one shared MLP
    with a sinusoidal embedding of k. W, V, c, r and the MLP's last layer start at zero: the factor
    starts at N(base_loc, diag(base_scale²)).

    Args:
        in_dims: sizes of the inputs (one or two vectors).
        out_dim: size of the latent it produces.
        num_steps: K, the number of step indices.
        hidden: the MLP's width (0: no MLP, the factor is affine in its inputs).
        covariance: :class:`GuideCovariance`.
        affine: include the per-step affine terms W_k, V_k.
    """

    def __init__(
        self,
        in_dims: tuple[int, ...],
        out_dim: int,
        num_steps: int,
        hidden: int = 64,
        time_dim: int = 32,
        covariance: GuideCovariance = GuideCovariance.DIAGONAL,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(covariance, GuideCovariance):
            raise ConfigError(f"covariance must be a GuideCovariance, got {covariance!r}")
        if hidden < 0 or out_dim < 1 or num_steps < 1 or any(d < 1 for d in in_dims):
            raise ConfigError(
                f"a guide factor needs positive sizes, got in_dims={in_dims}, out_dim={out_dim}, "
                f"num_steps={num_steps}, hidden={hidden}"
            )
        self.in_dims, self.out_dim, self.covariance = tuple(in_dims), out_dim, covariance
        K1 = num_steps + 1
        self.weights = (
            nn.ParameterList(nn.Parameter(torch.zeros(K1, out_dim, d)) for d in in_dims)
            if affine
            else nn.ParameterList()
        )
        self.bias = nn.Parameter(torch.zeros(K1, out_dim))
        self.log_scale = nn.Parameter(torch.zeros(K1, out_dim))
        if covariance is GuideCovariance.FULL:
            self.tril = nn.Parameter(torch.zeros(K1, out_dim, out_dim))
        self.hidden = hidden
        self.max_log_scale_shift = 4.0
        if hidden:
            n_out = out_dim if covariance is GuideCovariance.FULL else 2 * out_dim
            self.time = TimeEmbedding(time_dim)
            self.inp = nn.Linear(sum(in_dims) + time_dim, hidden)
            self.mlp = nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_out)
            )
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self, inputs: tuple[Tensor, ...], k: int, base_loc: Tensor, base_scale: Tensor
    ) -> dist.Distribution:
        """The factor's distribution, event shape (out_dim,), batch shape (N,) or, when an
        input carries particle dimensions in front, the broadcast batch shape."""
        batch = torch.broadcast_shapes(base_loc.shape[:-1], *(a.shape[:-1] for a in inputs))
        inputs = tuple(a.expand(batch + a.shape[-1:]) for a in inputs)
        loc = base_loc.expand(batch + base_loc.shape[-1:]) + self.bias[k]
        for w, a in zip(self.weights, inputs, strict=True):
            loc = loc + a @ w[k].T
        log_s = self.log_scale[k].expand_as(loc)
        if self.hidden:
            kt = torch.full((1,), k, dtype=torch.long, device=loc.device)
            emb = self.time(kt).to(loc.dtype).expand(batch + (-1,))
            h = self.inp(torch.cat([*inputs, emb], -1))
            out = self.mlp(h)
            if self.covariance is GuideCovariance.FULL:
                loc = loc + out
            else:
                d_loc, d_log_s = out.chunk(2, -1)
                # a bounded amortised log-scale: an unbounded one feeds back (wider draws, larger
                # inputs, wider draws) and diverges early in training
                bound = self.max_log_scale_shift
                loc, log_s = loc + d_loc, log_s + bound * torch.tanh(d_log_s / bound)
        scale = base_scale.expand_as(loc) * log_s.exp()
        if self.covariance is GuideCovariance.DIAGONAL:
            return dist.Normal(loc, scale).to_event(1)
        # FULL: the scales do not depend on the inputs, so any row gives them
        L = torch.tril(self.tril[k], -1) + torch.diag_embed(scale.reshape(-1, self.out_dim)[0])
        return dist.MultivariateNormal(loc, scale_tril=L)


class LearnedGuide(PyroModule):
    """An amortised Gaussian guide q_φ(x_{1:T} | x_0) built from the model it serves.

    It reads T, the data shape and the schedule from ``model`` (a :class:`~pyrodiff.Diffusion`),
    has the same sample sites (``"x_T"`` … ``"x_1"``) in the same ``pyro.plate("data")``, and is
    trained with Trace_ELBO (any structure) or TraceMeanField_ELBO (TOP_DOWN only; see
    :class:`GuideStructure`). It starts equal to the forward chain of the model's schedule: each
    factor is a :class:`GaussianFactor` centred on q(x_T | x_0), q(x_{t−1} | x_t, x_0) (TOP_DOWN)
    or q(x_t | x_{t−1}) (BOTTOM_UP_MARKOV). It holds no reference to the model, so the model's
    parameters and their names are the same whichever guide trains it.

    With ``covariance=GuideCovariance.FULL`` and either structure the family contains the exact
    posterior p_θ(x_{1:T} | x_0) of a linear-Gaussian model: that posterior is a Gaussian Markov
    chain in both directions, with means affine in the conditioning values and fixed covariances.

    Args:
        model: the generative model; needs ``num_steps``, ``event_shape`` and ``schedule``.
        structure: :class:`GuideStructure`.
        name: the prefix of its parameters and sites, in Pyro's convention; the model's name
            (at construction) unless given, so its sites are the model's. A sub-program like
            the model: it joins an enclosing plate and takes particle dimensions.
        hidden: width of the shared MLP (0 for purely affine factors).
        covariance: :class:`GuideCovariance`.
    """

    def __init__(
        self,
        model,
        structure: GuideStructure = GuideStructure.TOP_DOWN,
        hidden: int = 64,
        covariance: GuideCovariance = GuideCovariance.DIAGONAL,
        time_dim: int = 32,
        name: str | None = None,
    ) -> None:
        name = getattr(model, "name", "") if name is None else name
        super().__init__(name)
        self.name = name
        for attr in ("num_steps", "event_shape", "schedule"):
            if not hasattr(model, attr):
                raise ModelMismatchError(
                    f"LearnedGuide is built from a diffusion model with .{attr}; "
                    f"got {type(model).__name__}"
                )
        if not isinstance(structure, GuideStructure):
            raise ConfigError(f"structure must be a GuideStructure, got {structure!r}")
        self.structure = structure
        self.event_shape = tuple(model.event_shape)
        if covariance is GuideCovariance.FULL and len(self.event_shape) != 1:
            raise ConfigError(
                f"a FULL covariance needs vector data, got event shape {self.event_shape}; "
                "use GuideCovariance.DIAGONAL for images"
            )
        # the schedule only fixes where the factors start; as a buffer-only copy it adds no
        # parameters, so a learned model schedule is not trained through the guide
        schedule = model.schedule
        self.schedule = schedule if isinstance(schedule, NoiseSchedule) else schedule.frozen()
        D = math.prod(self.event_shape)
        ins = (D, D) if structure is GuideStructure.TOP_DOWN else (D,)
        self.factor = GaussianFactor(ins, D, self.num_steps, hidden, time_dim, covariance)

    @property
    def num_steps(self) -> int:
        """T."""
        return self.schedule.num_steps

    def check_model(self, model) -> None:
        """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless ``model`` has this guide's T
        and data shape."""
        check_pair(model, self)

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
            raise DataError("a learned guide needs the data x0: it is q_φ(x_(1:T) | x_0)")
        event_dim = len(self.event_shape)
        if x0.dim() <= event_dim or tuple(x0.shape[x0.dim() - event_dim :]) != self.event_shape:
            raise ModelMismatchError(
                f"this guide was built for data of shape {self.event_shape}, got a batch of shape "
                f"{tuple(x0.shape)}"
            )
        T = self.num_steps
        sched = self.schedule
        hook = fast_bound_hook()

        def flat(x: Tensor) -> Tensor:
            # (particles…, N, *event) → (particles…, N, D)
            return x.reshape(x.shape[: x.dim() - event_dim] + (-1,))

        def site(name: str, q: dist.Distribution) -> Tensor:
            return flat(pyro.sample(site_name(self, name), _as_event(q, self.event_shape)))

        with data_plate(self, x0.shape[x0.dim() - event_dim - 1], "the guide's x0"):
            if hook is not None:
                return hook.guide(self, x0)
            flat0 = flat(x0)
            if self.structure is GuideStructure.TOP_DOWN:
                base = q_marginal(sched, x0, T)
                x = site(f"x_{T}", self.factor((flat0, flat0), T, *_flat(base, event_dim)))
                for t in range(T, 1, -1):
                    latent = x.reshape(x.shape[:-1] + self.event_shape)
                    base = q_posterior(sched, x0, latent, t)
                    x = site(f"x_{t - 1}", self.factor((x, flat0), t - 1, *_flat(base, event_dim)))
            else:
                x = flat0
                for t in range(1, T + 1):
                    base = q_step(sched, x.reshape(x.shape[:-1] + self.event_shape), t)
                    x = site(f"x_{t}", self.factor((x,), t, *_flat(base, event_dim)))


class HierarchicalVAEGuide(PyroModule):
    """The learned encoder q_φ(z_{1:L} | x_0) of a :class:`~pyrodiff.models.HierarchicalVAE`.

    BOTTOM_UP_MARKOV: q_φ(z_1 | x_0) Π_{l=2}^{L} q_φ(z_l | z_{l−1}) (sites z_1 … z_L); TOP_DOWN:
    q_φ(z_L | x_0) Π_{l=L}^{2} q_φ(z_{l−1} | z_l, x_0) (sites z_L … z_1, the model's order, for
    which TraceMeanField_ELBO is valid; see :class:`~pyrodiff.guides.GuideStructure`). Each factor
    is a :class:`~pyrodiff.guides.GaussianFactor` that starts at N(0, I). Named after the model
    unless ``name`` is given; a sub-program like the model (plates, particles).
    """

    def __init__(
        self,
        model,
        structure: GuideStructure = GuideStructure.BOTTOM_UP_MARKOV,
        hidden: int = 128,
        name: str | None = None,
    ) -> None:
        name = getattr(model, "name", "") if name is None else name
        super().__init__(name)
        self.name = name
        if not hasattr(model, "latent_dims") or not hasattr(model, "event_shape"):
            raise ModelMismatchError(
                f"HierarchicalVAEGuide is built from a HierarchicalVAE, got {type(model).__name__}"
            )
        if not isinstance(structure, GuideStructure):
            raise ConfigError(f"structure must be a GuideStructure, got {structure!r}")
        self.structure = structure
        self.event_shape = model.event_shape
        self.latent_dims = tuple(model.latent_dims)
        D, dims = math.prod(self.event_shape), self.latent_dims
        if structure is GuideStructure.BOTTOM_UP_MARKOV:
            ins = [(D,)] + [(dims[l - 1],) for l in range(1, len(dims))]  # noqa: E741
        else:
            ins = [(dims[l + 1], D) for l in range(len(dims) - 1)] + [(D,)]  # noqa: E741
        # factors[l - 1] produces z_l
        self.factors = nn.ModuleList(
            GaussianFactor(i, d, num_steps=1, hidden=hidden) for i, d in zip(ins, dims, strict=True)
        )

    @property
    def num_steps(self) -> int:
        return len(self.latent_dims)

    def check_model(self, model) -> None:
        """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless ``model`` has this guide's
        data shape and latent sizes."""
        check_pair(model, self)
        if tuple(getattr(model, "latent_dims", ())) != self.latent_dims:
            raise ModelMismatchError(
                f"the guide's latent sizes {self.latent_dims} do not match the model's "
                f"{tuple(getattr(model, 'latent_dims', ()))}"
            )

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
            raise DataError("the encoder needs the data x0: it is q_φ(z_(1:L) | x_0)")
        event_dim = len(self.event_shape)
        if x0.dim() <= event_dim or tuple(x0.shape[x0.dim() - event_dim :]) != self.event_shape:
            raise ModelMismatchError(
                f"this guide was built for data of shape {self.event_shape}, got {tuple(x0.shape)}"
            )
        L = self.num_steps
        x = x0.reshape(x0.shape[: x0.dim() - event_dim] + (-1,))
        hook = fast_bound_hook()

        def factor(layer: int, inputs: tuple[Tensor, ...]) -> Tensor:
            d = self.latent_dims[layer - 1]
            zeros = x.new_zeros(x.shape[:-1] + (d,))
            q = self.factors[layer - 1](inputs, 1, zeros, torch.ones_like(zeros))
            return pyro.sample(site_name(self, f"z_{layer}"), q)

        with data_plate(self, x.shape[-2], "the guide's x0"):
            if hook is not None:
                return hook.guide(self, x0)
            if self.structure is GuideStructure.BOTTOM_UP_MARKOV:
                z = factor(1, (x,))
                for layer in range(2, L + 1):
                    z = factor(layer, (z,))
            else:
                z = factor(L, (x,))
                for layer in range(L, 1, -1):
                    z = factor(layer - 1, (z, x))


def _flat(q: dist.Normal, event_dim: int) -> tuple[Tensor, Tensor]:
    """(loc, scale) of an elementwise Normal over (…, *event), flattened to (…, D)."""
    loc, scale = q.loc, q.scale.expand_as(q.loc)
    batch = loc.shape[: loc.dim() - event_dim]
    return loc.reshape(batch + (-1,)), scale.reshape(batch + (-1,))


def _as_event(q: dist.Distribution, event_shape: tuple[int, ...]) -> dist.Distribution:
    """Give a factor over flat vectors the data's event shape (a no-op for vector data)."""
    if len(event_shape) == 1:
        return q
    base = q.base_dist if isinstance(q, dist.Independent) else q
    shape = q.batch_shape + event_shape
    return dist.Normal(base.loc.reshape(shape), base.scale.reshape(shape)).to_event(
        len(event_shape)
    )
