"""Timestep samplers: each keeps the timestep-sampled bound unbiased; the structure each promises."""

import math

import pytest
import reference
import torch

from pyrodiff import ForwardGuide, gaussian_oracle, linear_schedule
from pyrodiff.errors import ConfigError, DataError
from pyrodiff.infer import DiffusionELBO, estimator_spread
from pyrodiff.infer.timesteps import (
    AntitheticTimesteps,
    ImportanceTimesteps,
    LowDiscrepancyTimesteps,
    StratifiedTimesteps,
    UniformTimesteps,
    bin_steps,
    log_spaced_bins,
)

FIXED = [UniformTimesteps, StratifiedTimesteps, AntitheticTimesteps, LowDiscrepancyTimesteps]


def _warm_importance(history: int = 3) -> ImportanceTimesteps:
    return ImportanceTimesteps(history=history, uniform_mix=0.05)


@pytest.mark.parametrize("sampler_cls", FIXED)
@pytest.mark.parametrize("batch", [1, 5, 8])
def test_each_position_is_uniform(sampler_cls, batch):
    # unbiased per datum: E[w f(t_n)] = Σ_t f(t) at every batch position n, for a random f
    T, R = 7, 3000
    f = torch.rand(T, generator=torch.Generator().manual_seed(3)) * torch.arange(1, T + 1)
    sampler = sampler_cls()
    draws = []
    for _ in range(R):
        t, w = sampler.sample(batch, T, "cpu")
        assert t.shape == w.shape == (batch,) and t.dtype == torch.long
        assert (t >= 1).all() and (t <= T).all()
        draws.append(w * f[t - 1])
    vals = torch.stack(draws)  # (R, batch)
    mean, se = vals.mean(0), vals.std(0) / math.sqrt(R)
    assert ((mean - f.sum()).abs() < 4 * se + 1e-12).all()


def test_stratified_covers_every_t_once_when_batch_equals_T():
    T = 12
    for _ in range(20):
        t, _ = StratifiedTimesteps().sample(T, T, "cpu")
        assert sorted(t.tolist()) == list(range(1, T + 1))


def test_antithetic_pairs():
    T = 50
    t, _ = AntitheticTimesteps().sample(9, T, "cpu")
    assert torch.equal(t[5:], T + 1 - t[:4])


def test_low_discrepancy_is_an_even_grid():
    T, N = 40, 8
    t, _ = LowDiscrepancyTimesteps().sample(N, T, "cpu")
    gaps = torch.diff(torch.sort(t).values)
    assert (gaps == T // N).all()


def test_importance_is_uniform_until_warm_then_proportional_to_rms():
    T, k = 4, 3
    s = ImportanceTimesteps(history=k, uniform_mix=0.1)
    s.sample(1, T, "cpu")
    assert torch.allclose(s.probabilities(T), torch.full((T,), 0.25, dtype=torch.float64))
    # give step t the values ±t·(1, 2, 3): the RMS of the last 3 values is t·√(14/3)
    for rep in range(2):
        for j in (1, 2, 3):
            t = torch.arange(1, T + 1)
            s.update(t, (t * j * (-1) ** rep).double())
    assert s.warm
    rms = torch.arange(1, T + 1, dtype=torch.float64)
    expected = 0.9 * rms / rms.sum() + 0.1 / T
    assert torch.allclose(s.probabilities(T), expected)
    t, w = s.sample(1000, T, "cpu")
    assert torch.allclose(w.double(), 1.0 / expected[t - 1])


def test_importance_keeps_only_the_last_k_values_even_within_one_batch():
    s = ImportanceTimesteps(history=2, uniform_mix=0.5)
    s.sample(1, 2, "cpu")
    # step 1 sees 5, 6, 7 in one batch, then 8: its history must be {7, 8}
    s.update(torch.tensor([1, 2, 1, 1, 2]), torch.tensor([5.0, 1.0, 6.0, 7.0, 1.0]))
    s.update(torch.tensor([1]), torch.tensor([8.0]))
    assert sorted(s._values[1].tolist()) == [7.0, 8.0]
    assert sorted(s._values[2].tolist()) == [1.0, 1.0]
    assert s._counts[1:].tolist() == [4, 2]


def test_importance_rejects_bad_settings():
    with pytest.raises(ConfigError):
        ImportanceTimesteps(history=0)
    with pytest.raises(ConfigError):
        ImportanceTimesteps(uniform_mix=0.0)
    with pytest.raises(ConfigError):
        ImportanceTimesteps().update(torch.tensor([1]), torch.tensor([1.0]))
    s = ImportanceTimesteps()
    s.sample(2, 3, "cpu")
    with pytest.raises(DataError):
        s.update(torch.tensor([1, 2]), torch.tensor([1.0]))


def _linear_gaussian(T=12, D=2, seed=0):
    # the exact reverse process of N(0.5, 1.5²) data, perturbed: a linear-Gaussian model whose
    # terms fall steeply with t, like a trained model's, with the ELBO known in closed form
    g = torch.Generator().manual_seed(seed)
    sched = linear_schedule(T)
    model = gaussian_oracle(sched, torch.full((D,), 0.5), 1.5)
    with torch.no_grad():
        model.denoiser.weight.add_(0.05 * torch.randn(model.denoiser.weight.shape, generator=g))
        model.denoiser.bias.add_(0.05 * torch.randn(model.denoiser.bias.shape, generator=g))
    x0 = 1.5 * torch.randn(6, D, generator=g) + 0.5
    return model, ForwardGuide(sched), x0


def _warmed(objective, model, guide, x0):
    sampler = objective.timesteps
    if isinstance(sampler, ImportanceTimesteps):
        while not sampler.warm:
            objective.loss(model, guide, x0)
    return objective


@pytest.mark.parametrize(
    "sampler", [*(c() for c in FIXED), _warm_importance()], ids=lambda s: type(s).__name__
)
def test_timestep_sampled_bound_is_unbiased(sampler):
    # the truth is exact: the closed-form ELBO of a linear-Gaussian model. Each call averages
    # 40 particles (correlated within a call for the structured samplers, independent across
    # calls), so the standard error comes from the spread of the calls.
    model, guide, x0 = _linear_gaussian()
    lg = reference.from_model(model)  # the exact ELBO, written from ᾱ_t and the weights alone
    truth = reference.elbo_terms(lg, model.schedule.alpha_bar, x0).elbo.mean().item()
    objective = _warmed(DiffusionELBO(num_particles=40, timesteps=sampler), model, guide, x0)
    if isinstance(sampler, ImportanceTimesteps):
        uniform = torch.full((12,), 1 / 12.0, dtype=torch.float64)
        assert not torch.allclose(sampler.probabilities(12), uniform, atol=1e-2)
    (stats,) = estimator_spread(model, guide, x0, [objective], num_repeats=30)
    assert abs(stats.mean - truth) < 4 * stats.std / math.sqrt(30)


def test_importance_sampling_lowers_the_variance_when_terms_differ_across_t():
    # the terms fall by four orders of magnitude over t: π ∝ RMS spends the draws where the
    # bound is. Particles are i.i.d. for both samplers, so Var(one draw) = P · Var(mean of P).
    model, guide, x0 = _linear_gaussian()
    M, P = 100, 10
    (uniform,) = estimator_spread(model, guide, x0, [DiffusionELBO(num_particles=P)], M)
    objective = _warmed(
        DiffusionELBO(num_particles=P, timesteps=_warm_importance(history=5)), model, guide, x0
    )
    (importance,) = estimator_spread(model, guide, x0, [objective], M)
    # a sample log-variance from M draws has SE ≈ √(2/(M − 1)); the difference of two, √2 times that
    se = math.sqrt(4.0 / (M - 1))
    assert 2 * math.log(uniform.std / importance.std) > 4 * se


def test_log_spaced_bins_partition_every_t():
    for T in (1, 2, 10, 1000):
        for B in (1, 3, 12):
            edges = log_spaced_bins(T, B)
            assert edges[0] == 1 and edges[-1] == T + 1
            assert (torch.diff(edges) > 0).all() and len(edges) - 1 <= B
    with pytest.raises(ConfigError):
        log_spaced_bins(0, 3)


def test_bin_steps_sums_match_and_keep_leading_axes():
    x = torch.rand(3, 100)
    bins = bin_steps(x, num_bins=6)
    assert bins.totals.shape == (3, len(bins.edges) - 1)
    assert torch.allclose(bins.totals.sum(-1), x.double().sum(-1))
    for b, (lo, hi) in enumerate(zip(bins.edges[:-1], bins.edges[1:], strict=True)):
        assert torch.allclose(bins.totals[:, b], x.double()[:, lo - 1 : hi - 1].sum(-1))
    assert bins.labels()[0] == "t=1"
    with pytest.raises(DataError):
        bin_steps(torch.tensor(1.0))


def test_importance_state_round_trips():
    s = ImportanceTimesteps(history=2, uniform_mix=0.2)
    s.sample(4, 3, "cpu")
    s.update(torch.tensor([1, 2, 3, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    s.update(torch.tensor([1, 2, 3]), torch.tensor([5.0, 6.0, 7.0]))
    restored = ImportanceTimesteps(history=2, uniform_mix=0.2)
    restored.load_state_dict(s.state_dict())
    assert torch.equal(restored.probabilities(3), s.probabilities(3))
    with pytest.raises(ConfigError):
        ImportanceTimesteps(history=3).load_state_dict(s.state_dict())
