"""Timestep-sampled objectives checked by exact enumeration instead of by averaging.

A sampler draws t with probability π(t) and weight w(t); an objective's per-datum value at
(t, ε) is ℓ(t, ε). With ε fixed, E_t ℓ = Σ_t π(t) ℓ(t, ε) is a finite sum, and it must equal
the full decomposition written from ᾱ_t alone (tests/reference.py) at the same ε:

- DiffusionELBO:  L_T − Σ_t term_t(ε)                      (−ELBO at that ε)
- SimpleLoss:     (1/T) Σ_t ‖y_t − ŷ_t(ε)‖²                 (DDPM's L_simple)
- HybridLoss:     (1/T) Σ_t ‖y_t − ŷ_t‖² + λ (L_T − Σ_t term_t)

These are identities, so the tolerance is rounding (1e-10 on values of order 10–100). That
every sampler's π is what the sum assumes is checked by enumerating its randomness too.
"""

import pytest
import torch
from linear_models import random_linear_diffusion
from reference import Target, denoiser_output, elbo_terms, from_model, step_term, target_value

import pyrodiff.infer.timesteps as timesteps_module
from pyrodiff import ForwardGuide, Parameterization, ReverseVariance, linear_schedule
from pyrodiff.infer import DiffusionELBO
from pyrodiff.infer.objectives import HybridLoss, SimpleLoss
from pyrodiff.infer.timesteps import (
    AntitheticTimesteps,
    ImportanceTimesteps,
    LowDiscrepancyTimesteps,
    StratifiedTimesteps,
    TimestepSampler,
    UniformTimesteps,
)

T, D, N = 5, 2, 3
ATOL = 1e-10
LAM = 0.3  # far from the default 1e-3, so the bound's part is not lost in rounding


class _Forced(TimestepSampler):
    """Every datum at step t with weight w: one term of the enumeration."""

    def __init__(self, t: int, weight: float) -> None:
        self.t, self.weight = t, weight

    def sample(self, batch, num_steps, device, generator=None):
        return torch.full((batch,), self.t), torch.full((batch,), self.weight)


def _warm_importance() -> ImportanceTimesteps:
    sampler = ImportanceTimesteps(history=2, uniform_mix=0.05)
    sampler.sample(1, T, "cpu")
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        t = torch.arange(1, T + 1)
        sampler.update(t, torch.rand(T, generator=gen, dtype=torch.float64) * t)
    assert sampler.warm
    return sampler


SAMPLERS = {
    "uniform": UniformTimesteps,
    "stratified": StratifiedTimesteps,
    "low_discrepancy": LowDiscrepancyTimesteps,
    "antithetic": AntitheticTimesteps,
    "importance": _warm_importance,
}


def _law(sampler) -> tuple[torch.Tensor, torch.Tensor]:
    """(π(1…T), w(1…T)): π as the sampler defines it (uniform for every sampler but the
    importance one, whose π is enumerated below and whose marginal is checked here), w read
    from the sampler's own draws."""
    if isinstance(sampler, ImportanceTimesteps):
        pi = sampler.probabilities(T)
    else:
        pi = torch.full((T,), 1.0 / T, dtype=torch.float64)
    t, w = sampler.sample(400, T, "cpu", torch.Generator().manual_seed(0))
    weight = torch.zeros(T, dtype=torch.float64)
    for s in range(1, T + 1):
        ws = w[t == s].double()
        assert ws.numel() > 0, f"t = {s} never drawn"
        assert torch.all(ws == ws[0]), "a weight must be a function of t"
        weight[s - 1] = ws[0]
    return pi, weight


def _model(param, seed=0):
    schedule = linear_schedule(T, 0.05, 0.4, reference_steps=T)
    model = random_linear_diffusion(
        schedule,
        D,
        param,
        ReverseVariance.POSTERIOR,
        prior_loc=torch.tensor([1.0, -2.0]),
        prior_scale=torch.tensor([2.0, 0.5]),
        seed=seed,
    )
    return model, ForwardGuide(schedule), torch.randn(N, D) + 0.5


def _objective(kind, sampler):
    if kind is SimpleLoss:
        return SimpleLoss(timesteps=sampler)
    if kind is HybridLoss:
        return HybridLoss(lam=LAM, timesteps=sampler)
    return DiffusionELBO(timesteps=sampler)


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("kind", [DiffusionELBO, SimpleLoss, HybridLoss], ids=lambda k: k.__name__)
def test_enumerated_objective_is_the_full_decomposition(kind, name, param):
    model, guide, x0 = _model(param)
    pi, weight = _law(SAMPLERS[name]())
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)
    ab = model.schedule.alpha_bar
    lg = from_model(model)
    W, b = model.denoiser.weight.detach(), model.denoiser.bias.detach()
    torch.manual_seed(123)
    eps = torch.randn_like(x0)
    total = torch.zeros(N, dtype=torch.float64)
    for s in range(1, T + 1):
        torch.manual_seed(123)  # the objective draws ε with randn_like: the same ε for every t
        loss = _objective(kind, _Forced(s, float(weight[s - 1])))
        total += pi[s - 1] * loss.per_datum_loss(model, guide, x0).detach()
    prior = elbo_terms(lg, ab, x0).prior
    neg_elbo = prior - sum(step_term(lg, ab, x0, s, eps) for s in range(1, T + 1))
    simple = (
        sum(
            (
                (
                    target_value(ab, x0, eps, s, Target[param.name])
                    - denoiser_output(ab, W, b, x0, eps, s)
                )
                ** 2
            ).sum(-1)
            for s in range(1, T + 1)
        )
        / T
    )
    expected = {DiffusionELBO: neg_elbo, SimpleLoss: simple, HybridLoss: simple + LAM * neg_elbo}[
        kind
    ]
    torch.testing.assert_close(total, expected, atol=ATOL, rtol=0)


def test_importance_weights_are_inverse_probabilities():
    sampler = _warm_importance()
    pi = sampler.probabilities(T)
    t, w = sampler.sample(200, T, "cpu", torch.Generator().manual_seed(1))
    torch.testing.assert_close(w.double() * pi[t - 1], torch.ones(200, dtype=torch.float64))
    # the warm π is not uniform here, so this is not the uniform case in disguise
    assert pi.max() > 1.5 * pi.min()


def _grid(M):
    return (torch.arange(M, dtype=torch.float64) + 0.5) / M


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_low_discrepancy_times_are_uniform_per_datum(monkeypatch, batch):
    """u_0 enumerated on a grid of M midpoints (M a multiple of N·T, so every shifted u_n lands on
    the same grid): each datum sees every t exactly M/T times."""
    M = batch * T * 4
    counts = torch.zeros(batch, T + 1, dtype=torch.long)
    for u0 in _grid(M):
        monkeypatch.setattr(timesteps_module, "_unit", lambda n, d, g, u0=u0: u0.reshape(1))
        t, w = LowDiscrepancyTimesteps().sample(batch, T, "cpu")
        counts[torch.arange(batch), t] += 1
        assert torch.all(w == T)
    assert torch.all(counts[:, 0] == 0) and torch.all(counts[:, 1:] == M // T)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_stratified_times_are_uniform_per_datum(monkeypatch, batch):
    """Enumerating each stratum assignment (a cyclic shift per datum, each stratum once) and U
    on a grid of M midpoints: each datum sees every t exactly batch·M/T times."""
    M = T * 4
    counts = torch.zeros(batch, T + 1, dtype=torch.long)
    for shift in range(batch):
        perm = torch.roll(torch.arange(batch), shift)
        monkeypatch.setattr(torch, "randperm", lambda n, **kw: perm.clone())  # noqa: B023
        for u in _grid(M):
            monkeypatch.setattr(timesteps_module, "_unit", lambda n, d, g, u=u: u.expand(n))
            t, w = StratifiedTimesteps().sample(batch, T, "cpu")
            counts[torch.arange(batch), t] += 1
            assert torch.all(w == T)
    monkeypatch.undo()
    assert torch.all(counts[:, 0] == 0) and torch.all(counts[:, 1:] == batch * M // T)


@pytest.mark.parametrize("batch", [1, 4, 5])
def test_antithetic_times_are_uniform_per_datum(monkeypatch, batch):
    """Enumerating the first half's draw over 1…T: every datum, the mirrored ones included,
    sees every t once."""
    counts = torch.zeros(batch, T + 1, dtype=torch.long)
    for s in range(1, T + 1):
        monkeypatch.setattr(torch, "randint", lambda lo, hi, size, **kw: torch.full(size, s))  # noqa: B023
        t, w = AntitheticTimesteps().sample(batch, T, "cpu")
        counts[torch.arange(batch), t] += 1
        assert torch.all(w == T)
    monkeypatch.undo()
    assert torch.all(counts[:, 0] == 0) and torch.all(counts[:, 1:] == 1)
