"""ReverseVariance.LEARNED_RANGE: its endpoints, its gradient under the bound, the hybrid's split."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI
from torch import nn

from pyrodiff import (
    Diffusion,
    DiscretizedGaussianLikelihood,
    ForwardGuide,
    Parameterization,
    ReverseVariance,
    linear_schedule,
)
from pyrodiff.infer import DiffusionELBO, elbo_terms, step_terms
from pyrodiff.infer.objectives import HybridLoss, SimpleLoss
from pyrodiff.infer.timesteps import TimestepSampler
from pyrodiff.networks import LinearDenoiser, MLPDenoiser, UNetDenoiser


class TwoHeads(nn.Module):
    """A mean head and a separate per-step, per-datum-element v: each with its own parameters."""

    def __init__(self, D, T, exact_for_standard_normal=False, v0=0.0):
        super().__init__()
        self.event_shape = (D,)
        self.mean = LinearDenoiser(D, T)
        self.v = nn.Parameter(torch.full((T + 1, D), float(v0)))
        self.exact = exact_for_standard_normal
        self.register_buffer("s", torch.zeros(T + 1))
        self.offset = None  # a per-datum (N, D) tensor added to v: per-datum gradients

    def forward(self, x_t, t):
        # for x_0 ~ N(0, I), E[ε | x_t] = √(1 − ᾱ_t) x_t: the exact ε-prediction
        eps = self.s[t][:, None] * x_t if self.exact else self.mean(x_t, t)
        v = self.v[t] if self.offset is None else self.v[t] + self.offset
        return torch.cat([eps, v], dim=1)


class FixedTimesteps(TimestepSampler):
    def __init__(self, t):
        self.t = t

    def sample(self, batch, num_steps, device, generator=None):
        return self.t.to(device), torch.full((batch,), float(num_steps), device=device)


def _model(T=20, D=3, **kw):
    sched = linear_schedule(T)
    den = TwoHeads(D, T, **kw)
    den.s.copy_(sched.one_minus_alpha_bar.sqrt())
    model = Diffusion(den, sched, variance=ReverseVariance.LEARNED_RANGE)
    return model, ForwardGuide(sched)


@pytest.mark.parametrize(
    "v, fixed", [(0.0, ReverseVariance.POSTERIOR), (1.0, ReverseVariance.BETA)]
)
def test_endpoints_are_the_fixed_variances(v, fixed):
    torch.manual_seed(0)
    model, _ = _model(v0=v)
    with torch.no_grad():
        model.denoiser.mean.weight.normal_()
    plain = Diffusion(model.denoiser.mean, model.schedule, variance=fixed)
    T = model.num_steps
    x_t = torch.randn(T, 3)
    t = torch.arange(1, T + 1)
    m1, v1 = model.reverse_moments(x_t, t)
    m2, v2 = plain.reverse_moments(x_t, t)
    assert torch.allclose(m1, m2)
    assert torch.allclose(v1, v2.expand_as(v1), rtol=1e-12)


@pytest.mark.parametrize("v", [0.3, 1.0])
def test_bound_gradient_in_v_matches_the_closed_form(v):
    # x_0 ~ N(0, I) with the exact mean: E[β̃_t + (μ̃_t − μ_θ)²] = β_t, so per element
    # E L_{t−1} = ½(log σ² − log β̃_t + β_t/σ² − 1) and ∂/∂v = ½(1 − β_t/σ²)(log β_t − log β̃_t),
    # zero at v = 1 (σ² = β_t, DDPM's choice for N(0, I) data)
    model, guide = _model(T=20, D=3, exact_for_standard_normal=True, v0=v)
    s = model.schedule
    N = 4000
    for t_val in (2, 5, 15):
        t = torch.full((N,), t_val)
        x0 = torch.randn(N, 3)
        model.denoiser.offset = torch.zeros(N, 3, requires_grad=True)
        neg_kl = step_terms(model, guide, x0, t)
        (grad,) = torch.autograd.grad((-neg_kl).sum(), model.denoiser.offset)
        g = grad.sum(-1)  # d/dv of each datum's term, v shared over its elements
        lo = math.log(s.posterior_variance[t_val].item())
        hi = math.log(s.betas[t_val].item())
        sigma2 = math.exp(v * hi + (1 - v) * lo)
        truth = 3 * 0.5 * (1 - s.betas[t_val].item() / sigma2) * (hi - lo)
        se = g.std().item() / math.sqrt(N)
        assert abs(g.mean().item() - truth) < 4 * se + 1e-12
        if v != 1.0:
            assert abs(truth) > 4 * se  # the check has power: the gradient is not ~0


def test_hybrid_splits_the_gradient_between_mean_and_variance():
    torch.manual_seed(0)
    model, guide = _model(T=15, D=2, v0=0.2)
    with torch.no_grad():
        model.denoiser.mean.weight.normal_(0, 0.3)
        model.denoiser.v.normal_(0.5, 0.3)
    x0 = torch.randn(30, 2)
    t = torch.randint(1, 16, (30,))

    def grads(objective):
        model.denoiser.zero_grad()
        torch.manual_seed(7)
        objective.differentiable_loss(model, guide, x0).backward()
        return model.denoiser.mean.weight.grad.clone(), model.denoiser.v.grad.clone()

    hm, hv = grads(HybridLoss(lam=0.01, timesteps=FixedTimesteps(t)))
    sm, sv = grads(SimpleLoss(timesteps=FixedTimesteps(t)))
    _, bv = grads(DiffusionELBO(timesteps=FixedTimesteps(t)))
    assert torch.allclose(hm, sm, rtol=1e-10)  # the mean learns from L_simple only
    assert (sv == 0).all()  # L_simple leaves the variance alone
    assert torch.allclose(hv, 0.01 * bv, rtol=1e-9, atol=1e-15)  # the variance, from the bound
    assert hv.abs().sum() > 0


@pytest.mark.parametrize("make_loss", [HybridLoss, DiffusionELBO])
def test_training_moves_v_towards_beta_for_standard_normal_data(make_loss):
    model, guide = _model(T=10, D=2, exact_for_standard_normal=True, v0=0.0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=make_loss())
    for _ in range(60):
        svi.step(torch.randn(64, 2))
    v = model.denoiser.v.detach()[2:]
    # started at 0 (σ² = β̃); the bound's optimum is v = 1 (σ² = β) at every t ≥ 2
    assert (v > 0.5).all() and (v < 1.5).all()


def test_learned_range_with_the_shipped_denoisers():
    sched = linear_schedule(12)
    for den, x in [
        (MLPDenoiser(4, hidden=8, depth=1, out_dim=8), torch.rand(5, 4) * 2 - 1),
        (
            UNetDenoiser(channels=1, image_size=4, base=8, out_channels=2),
            torch.rand(5, 1, 4, 4) * 2 - 1,
        ),
    ]:
        model = Diffusion(
            den,
            sched,
            DiscretizedGaussianLikelihood(17),
            parameterization=Parameterization.EPSILON,
            variance=ReverseVariance.LEARNED_RANGE,
            event_shape=x.shape[1:],
        )
        x = torch.round((x + 1) * 8) / 8 - 1
        mean, var = model.reverse_moments(x, torch.full((5,), 3))
        assert mean.shape == var.shape == x.shape
        terms = elbo_terms(model, ForwardGuide(sched), x)
        assert torch.isfinite(terms.elbo).all()
