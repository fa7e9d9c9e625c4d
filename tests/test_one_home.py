"""One noise process keyed by λ = +log SNR, one home per formula: the open shape of λ (a schedule
per dimension), the λ convention and its deprecated γ names, one endpoints API, one grey-level
map, one data-plate argument."""

import math

import pytest
import torch

from pyrodiff import ContinuousDiffusion, Diffusion, ForwardGuide, linear_schedule
from pyrodiff.data import Dataset
from pyrodiff.gaussian import (
    Parameterization,
    gaussian_kl,
    isotropic_gaussian_kl,
    log_snr_marginal_moments,
    predict_x0,
    prior_kl,
    sum_event,
)
from pyrodiff.guides import LearnedSchedule
from pyrodiff.infer import ContinuousELBO, ScheduleObjective, continuous_elbo_terms
from pyrodiff.likelihoods import DiscretizedGaussianLikelihood, DiscretizedNormal
from pyrodiff.models.continuous import Conditioning
from pyrodiff.models.diffusion import ReverseVariance
from pyrodiff.networks import MLPDenoiser
from pyrodiff.schedules import (
    CosineLogSNR,
    Endpoints,
    LearnedLogSNR,
    LinearLogSNR,
    LogSNRSchedule,
    alpha_sigma,
)

D = 3


class PerDimension(LogSNRSchedule):
    """``base``'s λ(t) repeated over D dimensions: a schedule per dimension, all dims equal."""

    def __init__(self, base: LogSNRSchedule, dims: int) -> None:
        super().__init__()
        self.base, self.dims = base, dims

    def log_snr_and_slope(self, t, shape_hook=None):
        kw = {} if shape_hook is None else {"shape_hook": shape_hook}
        lam, slope = self.base.log_snr_and_slope(t, **kw)
        shape = (*lam.shape, self.dims)
        return lam.unsqueeze(-1).expand(shape), slope.unsqueeze(-1).expand(shape)

    def parameters_of_shape(self):
        return self.base.parameters_of_shape()


def _pair(base_factory, parameterization):
    """(scalar model, per-dimension model) with the same network weights and schedule."""
    torch.manual_seed(0)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    scalar = ContinuousDiffusion(
        net, base_factory(), parameterization=parameterization, conditioning=Conditioning.TIME
    )
    torch.manual_seed(0)
    net2 = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    per_dim = ContinuousDiffusion(
        net2,
        PerDimension(base_factory(), D),
        parameterization=parameterization,
        conditioning=Conditioning.TIME,
    )
    per_dim.schedule.base.load_state_dict(scalar.schedule.state_dict())
    return scalar, per_dim


BASES = {
    "linear": lambda: LinearLogSNR(log_snr_start=12.0, log_snr_end=-6.0),
    "learned": lambda: LearnedLogSNR(log_snr_start=12.0, log_snr_end=-6.0, hidden=4),
}


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize("base", list(BASES))
def test_a_per_dimension_constant_schedule_gives_the_scalar_results(base, param):
    scalar, per_dim = _pair(BASES[base], param)
    assert per_dim.schedule.endpoints()[0].shape == (D,)  # λ carries the event shape
    x = torch.randn(6, D)
    terms = [
        continuous_elbo_terms(m, x, generator=torch.Generator().manual_seed(3))
        for m in (scalar, per_dim)
    ]
    for name in ("reconstruction", "diffusion", "prior"):
        torch.testing.assert_close(
            getattr(terms[1], name), getattr(terms[0], name), rtol=1e-10, atol=1e-10
        )
    objectives = [ScheduleObjective.BOUND]
    if base == "learned":
        objectives.append(ScheduleObjective.VARIANCE)
    for objective in objectives:
        losses, grads = [], []
        for m in (scalar, per_dim):
            m.zero_grad()
            torch.manual_seed(4)
            loss = ContinuousELBO(schedule_objective=objective)(m, None)(x)
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad for p in m.parameters()])
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-10)
        for g_per_dim, g_scalar in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(g_per_dim, g_scalar, rtol=1e-10, atol=1e-10)


def test_the_closed_forms_take_a_log_snr_per_dimension():
    x = torch.randn(5, D)
    lam = torch.tensor(1.7)
    lam_d = lam.expand(D)
    for got, want in zip(
        log_snr_marginal_moments(lam_d, x), log_snr_marginal_moments(lam, x), strict=True
    ):
        torch.testing.assert_close(got.expand_as(x), want.expand_as(x), rtol=1e-10, atol=0)
    loc, scale = log_snr_marginal_moments(lam, x)
    loc_d, scale_d = log_snr_marginal_moments(lam_d, x)
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    torch.testing.assert_close(
        prior_kl(loc_d, scale_d, zero, one), prior_kl(loc, scale, zero, one), rtol=1e-10, atol=0
    )
    # a different λ per dimension is a different process in each dimension
    lam_v = torch.tensor([-2.0, 0.5, 3.0])
    alpha, sigma = alpha_sigma(lam_v)
    for d in range(D):
        a_d, s_d = alpha_sigma(lam_v[d])
        assert alpha[d] == a_d and sigma[d] == s_d


def test_log_snr_conditioning_refuses_a_schedule_per_dimension():
    from pyrodiff.errors import ConfigError

    with pytest.raises(ConfigError, match="Conditioning.TIME"):
        ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1), PerDimension(LinearLogSNR(), D))


# --- one sign: λ = +log SNR ------------------------------------------------------------------


def test_alpha_and_sigma_come_from_lambda_with_a_bar_equal_to_sigmoid_lambda():
    lam = torch.linspace(-20.0, 20.0, 81)
    alpha, sigma = alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam), rtol=1e-14, atol=0)
    # log SNR = log(α² / σ²) = λ
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam, rtol=0, atol=1e-12)
    # the discrete tables hold the same convention: log_snr_t = log(ᾱ_t / (1 − ᾱ_t))
    s = linear_schedule(50)
    torch.testing.assert_close(
        alpha_sigma(s.log_snr[1:])[0] ** 2, s.alpha_bar[1:], rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("cls", [LinearLogSNR, CosineLogSNR])
def test_the_deprecated_gamma_names_are_minus_lambda_exactly(cls):
    new = cls(log_snr_start=13.3, log_snr_end=-5.0)
    with pytest.warns(DeprecationWarning, match="γ"):
        old = cls(-13.3, 5.0)
    with pytest.warns(DeprecationWarning):
        named = cls(gamma_min=-13.3, gamma_max=5.0)
    t = torch.linspace(0.0, 1.0, 11)
    for sched in (old, named):
        assert torch.equal(sched.log_snr(t), new.log_snr(t))
    lam, slope = new.log_snr_and_slope(t)
    assert (slope < 0).all() and lam[0] > lam[-1]  # λ falls as the noise grows
    with pytest.warns(DeprecationWarning):
        g, g_slope = new.gamma_and_slope(t)
    assert torch.equal(g, -lam) and torch.equal(g_slope, -slope)
    with pytest.warns(DeprecationWarning):
        assert torch.equal(new.gamma(t), -lam)


def test_a_learned_log_snr_saved_with_gamma_0_loads_into_start():
    torch.manual_seed(1)
    sched = LearnedLogSNR(log_snr_start=11.0, log_snr_end=-4.0, hidden=4)
    state = sched.state_dict()
    old = {
        ("gamma_0" if k == "start" else k): (-v if k == "start" else v) for k, v in state.items()
    }
    fresh = LearnedLogSNR(hidden=4)
    fresh.load_state_dict(old)
    t = torch.linspace(0.0, 1.0, 7)
    assert torch.equal(fresh.log_snr(t), sched.log_snr(t))
    with pytest.warns(DeprecationWarning):
        assert fresh.gamma_0.item() == -11.0


# --- one endpoints API ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Endpoints))
def test_both_learned_schedules_answer_endpoints_and_endpoints_mode_alike(mode):
    discrete = LearnedSchedule.from_schedule(linear_schedule(8), mode)
    continuous = LearnedLogSNR(log_snr_start=9.0, log_snr_end=-3.0, hidden=4, endpoints=mode)
    for sched in (discrete, continuous):
        assert sched.endpoints_mode is mode
        first, last = sched.endpoints()
        assert first > last  # (least noise, most noise)
        assert first.requires_grad is (mode is Endpoints.LEARNED)
    torch.testing.assert_close(
        torch.stack(discrete.endpoints()), discrete.log_snr[[1, 8]], rtol=0, atol=1e-12
    )
    ends = continuous.log_snr(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(torch.stack(continuous.endpoints()), ends, rtol=0, atol=1e-12)
    with pytest.warns(DeprecationWarning):
        assert continuous.ends() == continuous.endpoints()


# --- one grey-level map ------------------------------------------------------------------------


@pytest.mark.parametrize("K", [2, 3, 17, 256])
def test_levels_and_values_are_inverse_maps_on_the_grid(K):
    lik = DiscretizedGaussianLikelihood(K)
    k = torch.arange(K)
    x = lik.from_levels(k)
    assert x[0] == -1.0 and x[-1] == 1.0
    torch.testing.assert_close(x, -1.0 + 2.0 * k.double() / (K - 1), rtol=0, atol=1e-15)
    assert torch.equal(lik.to_levels(x), k)
    lik.validate(x)  # the values are on the likelihood's grid
    # off-grid values go to the nearest level, outside values to the end levels
    half = 1.0 / (K - 1)
    assert torch.equal(lik.to_levels(x + 0.4 * half), k)
    assert torch.equal(lik.to_levels(torch.tensor([-5.0, 5.0])), torch.tensor([0, K - 1]))
    assert torch.equal(lik.quantize(x + 0.4 * half), x)
    # a DiscretizedNormal draws on the same grid
    draws = DiscretizedNormal(torch.zeros(200), torch.full((200,), 0.7), K).sample()
    assert torch.equal(lik.quantize(draws), draws)


def test_a_dataset_maps_levels_through_its_likelihood():
    K = 5
    levels = torch.randint(0, K, (7, 2))
    ds = Dataset("grid", train=torch.zeros(1, 2), test=torch.zeros(1, 2), num_levels=K)
    x = ds.from_levels(levels)
    assert torch.equal(ds.to_levels(x), levels)
    assert torch.equal(x, ds.likelihood().from_levels(levels))


# --- the model's data plate: batch_size ----------------------------------------------------------


def test_the_models_second_argument_is_batch_size_and_num_samples_is_deprecated():
    model = Diffusion(MLPDenoiser(D, hidden=8, depth=1), linear_schedule(3))
    torch.manual_seed(0)
    x = model(None, batch_size=4)
    assert x.shape == (4, D)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="batch_size"):
        y = model(None, num_samples=4)
    assert torch.equal(x, y)
    with pytest.raises(TypeError, match="not both"):
        model(None, 4, num_samples=4)
    guide = ForwardGuide(model.schedule)
    with pytest.warns(DeprecationWarning):
        guide(torch.zeros(2, D), num_samples=2)


# --- a continuous model's discretisation: fixed variances as a buffer --------------------------


def test_discretize_holds_the_reverse_variances_as_a_fixed_table():
    model = ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1), LinearLogSNR())
    d = model.discretize(6)
    buffers = dict(d.named_buffers())
    assert "log_variance" in buffers
    assert "log_variance" not in dict(d.named_parameters())
    # the decoder's variance is σ_0²/α_0² = e^{−λ(0)}; λ_1 passes through the float64 table
    # 1 − ᾱ_1 ≈ 1.7e-6, whose rounding (1e-16 / 1.7e-6) moves it by about 1e-10
    l0, _ = model.schedule.endpoints()
    assert buffers["log_variance"][1].item() == pytest.approx(-l0.item(), abs=1e-9)
    from pyrodiff.errors import ConfigError

    with pytest.raises(ConfigError, match="PER_STEP"):
        Diffusion(
            MLPDenoiser(D, hidden=8, depth=1),
            linear_schedule(3),
            fixed_log_variance=torch.zeros(4),
        )
    with pytest.raises(ConfigError, match="shape"):
        Diffusion(
            MLPDenoiser(D, hidden=8, depth=1),
            linear_schedule(3),
            variance=ReverseVariance.PER_STEP,
            fixed_log_variance=torch.zeros(3),
        )


@pytest.mark.parametrize("param", list(Parameterization))
def test_predict_x0_reads_the_mean_half_of_a_learned_range_output(param):
    torch.manual_seed(2)
    net = MLPDenoiser(D, hidden=8, depth=1, out_dim=2 * D)
    model = Diffusion(
        net, linear_schedule(10), parameterization=param, variance=ReverseVariance.LEARNED_RANGE
    )
    x_t, t = torch.randn(4, D), torch.tensor([1, 3, 7, 10])
    expected = predict_x0(param, model.schedule, x_t, t, net(x_t, t)[:, :D])
    assert torch.equal(model.predict_x0(x_t, t), expected)


# --- the fixed-variance KL: a constant plus a weighted squared error -----------------------------


def test_the_isotropic_kl_is_the_elementwise_kl_summed():
    torch.manual_seed(5)
    m_q, m_p = torch.randn(6, 4), torch.randn(6, 4)
    v_q, v_p = torch.rand(6, 1) + 0.1, torch.rand(6, 1) + 0.1
    full = sum_event(gaussian_kl(m_q, v_q.expand(6, 4), m_p, v_p.expand(6, 4)), 1)
    iso = isotropic_gaussian_kl(((m_q - m_p) ** 2).sum(-1), v_q[:, 0], v_p[:, 0], 4)
    torch.testing.assert_close(iso, full, rtol=1e-13, atol=0)
    # by hand: ½ [D (log v_p/v_q + v_q/v_p − 1) + ‖m_q − m_p‖²/v_p]
    n = 0
    by_hand = 0.5 * (
        4 * (math.log(v_p[n].item() / v_q[n].item()) + v_q[n].item() / v_p[n].item() - 1)
        + ((m_q[n] - m_p[n]) ** 2).sum().item() / v_p[n].item()
    )
    assert iso[n].item() == pytest.approx(by_hand, rel=1e-13)
