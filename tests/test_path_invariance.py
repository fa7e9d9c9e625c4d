"""What theory says about the path of a per-dimension log-SNR schedule, checked on Gaussian data.

The derivation is docs/path_invariance.md. With a linear denoiser x̂ = (B + U)⁻¹ U^{1/2} y
(y = z_t/σ_t, U = diag(e^λ)): if B is symmetric positive definite x̂ is the posterior mean of
p′ = N(0, B⁻¹), the diffusion loss is the closed form KL(q(z_0|x) ‖ p′_{λ(0)}) −
KL(q(z_1|x) ‖ p′_{λ(1)}) and two paths with the same per-dimension ends give the same bound;
if B is not symmetric, x̂ is the posterior mean of no distribution and the path matters.
Expected values come from ``reference_paths`` (numpy, nothing from pyrodiff); the library's
estimators are held to them within 4 measured standard errors, quadrature within its own
measured error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_paths as ref
import torch
from torch import Tensor, nn

from pyrodiff import Conditioning, ContinuousDiffusion, Parameterization
from pyrodiff.infer import (
    ContinuousELBO,
    ImportanceTimesteps,
    UniformTimesteps,
    continuous_elbo_terms,
    diffusion_integrand,
    sample_times,
)
from pyrodiff.schedules import LogSNRSchedule

D = 3
# the data's covariance: correlated dimensions with unequal variances
SIGMA = np.array([[1.0, 0.6, -0.3], [0.6, 1.5, 0.4], [-0.3, 0.4, 0.8]])
B_OPTIMAL = np.linalg.inv(SIGMA)  # x̂ is then E[x | z_t] under the data's own density
# symmetric positive definite but not Σ⁻¹: the posterior mean of another Gaussian p′
B_OTHER = np.array([[2.0, -0.5, 0.3], [-0.5, 1.0, 0.2], [0.3, 0.2, 0.7]])
# B_OPTIMAL plus a skew part: B + U keeps a positive definite symmetric part, so x̂ exists
# at every noise level, but its error field is not a gradient
SKEW = np.array([[0.0, 1.5, -1.0], [-1.5, 0.0, 0.8], [1.0, -0.8, 0.0]])
B_SKEW = B_OPTIMAL + 2.0 * SKEW
X = np.random.default_rng(0).multivariate_normal(np.zeros(D), SIGMA, size=3)

# per-dimension ends λ(0), λ(1) and two paths between them that reorder the dimensions:
# under PATH_A dimension 0 loses its signal early and dimension 1 late, under PATH_B the reverse
START = np.array([8.0, 6.0, 7.0])
END = np.array([-5.0, -4.0, -6.0])
PATH_A = np.array([3.0, -3.0, 1.0])
PATH_B = np.array([-3.0, 3.0, -1.5])
QUADRATURE_TOL = 1e-10  # the panels are doubled until the value moves less than this


class PathLogSNR(LogSNRSchedule):
    """λ_j(t) = λ0_j + (λ1_j − λ0_j) ρ_j(t), ρ_j(t) = (e^{a_j t} − 1)/(e^{a_j} − 1): a monotone path
    per dimension from λ0 to λ1; λ(t) and λ′(t) have shape t.shape + (D,)."""

    def __init__(self, start, end, rate) -> None:
        super().__init__()
        for name, value in (("start", start), ("end", end), ("rate", rate)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float64))

    def log_snr_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t[..., None]
        span, denom = self.end - self.start, torch.expm1(self.rate)
        rho = torch.expm1(self.rate * t) / denom
        drho = self.rate * torch.exp(self.rate * t) / denom
        return self.start + span * rho, span * drho

    def endpoints(self) -> tuple[Tensor, Tensor]:
        return self.start, self.end


class LinearDenoiser(nn.Module):
    """x̂_0 = (B + diag(snr))⁻¹ diag(√snr) y, y = z_t/σ_t = √snr ⊙ x + ε: reads t = c/1000 from the
    model's TIME feature and λ(t) from the schedule it is given."""

    def __init__(self, B, schedule: PathLogSNR) -> None:
        super().__init__()
        self.register_buffer("B", torch.as_tensor(B, dtype=torch.float64))
        self.schedule = schedule

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        lam, _ = self.schedule.log_snr_and_slope(c / 1000.0)
        snr = torch.exp(lam)
        y = z / torch.sigmoid(-lam).sqrt()
        rhs = (snr.sqrt() * y)[..., None]
        return torch.linalg.solve(self.B + torch.diag_embed(snr), rhs)[..., 0]


def model_for(B, start=START, end=END, rate=PATH_A) -> ContinuousDiffusion:
    schedule = PathLogSNR(start, end, rate)
    return ContinuousDiffusion(
        LinearDenoiser(B, schedule),
        schedule,
        parameterization=Parameterization.X0,
        conditioning=Conditioning.TIME,
        event_shape=(D,),
    )


def estimate(model, repeats: int, seed: int, use_objective: bool = False):
    """Per-datum draws of the bound at X, ``repeats`` each, shape (repeats, len(X)): from
    ``continuous_elbo_terms`` (seeded generator) or from ``ContinuousELBO``'s per-datum loss
    (seeded global generator, the objective SVI minimises, negated)."""
    xs = torch.as_tensor(X).repeat(repeats, 1)
    with torch.no_grad():
        if use_objective:
            torch.manual_seed(seed)
            draws = -ContinuousELBO().per_datum_loss(model, None, xs)
        else:
            gen = torch.Generator().manual_seed(seed)
            draws = continuous_elbo_terms(model, xs, generator=gen).elbo
    return draws.reshape(repeats, len(X))


def mean_se(draws: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return draws.mean(0).numpy(), (draws.std(0) / math.sqrt(draws.shape[0])).numpy()


def quadrature(B, rate, start=START, end=END) -> tuple[np.ndarray, np.ndarray]:
    """The bound at each datum by quadrature over t, and the quadrature's last move."""
    out = [ref.bound_by_quadrature(x, B, start, end, rate, QUADRATURE_TOL) for x in X]
    return np.array([v for v, _ in out]), np.array([e for _, e in out])


# --- the library computes what the reference computes --------------------------------------------


def test_per_dimension_integrand_is_the_reference_one_at_every_t_and_noise():
    # exact at fixed (t, ε): the schedule, the denoiser and diffusion_integrand against the
    # reference's formula; λ carries the event shape through the estimator's code
    model = model_for(B_SKEW, rate=PATH_B)
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(64, generator=gen, dtype=torch.float64)
    noise = torch.randn(64, D, generator=gen, dtype=torch.float64)
    xs = torch.as_tensor(X).repeat(64 // len(X) + 1, 1)[:64]
    with torch.no_grad():
        got = diffusion_integrand(model, xs, t, noise).numpy()
    want = np.array(
        [
            ref.integrand(
                t[i : i + 1].numpy(), xs[i].numpy(), B_SKEW, START, END, PATH_B, noise[i].numpy()
            )[0]
            for i in range(64)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # and the estimator's closed-form terms read the per-dimension ends
    terms = continuous_elbo_terms(model, torch.as_tensor(X), generator=gen)
    np.testing.assert_allclose(terms.prior.numpy(), [ref.prior_kl(x, END) for x in X], rtol=1e-12)


# --- 1. a posterior-mean denoiser: any path, the same bound, in closed form ----------------------


@pytest.mark.parametrize("B", [B_OPTIMAL, B_OTHER], ids=["sigma_inverse", "other_spd"])
def test_symmetric_B_gives_the_closed_form_bound_on_every_path_by_quadrature(B):
    closed = np.array([ref.bound_closed_form(x, B, START, END) for x in X])
    for rate in (PATH_A, PATH_B):
        value, moved = quadrature(B, rate)
        # the settled value errs by far less than its last move (< 1e-10); the closed form's
        # log-determinants and solves round at ~1e-14
        assert (moved < QUADRATURE_TOL).all()
        np.testing.assert_allclose(value, closed, rtol=0, atol=1e-8)


@pytest.mark.parametrize("use_objective", [False, True], ids=["terms", "objective"])
def test_symmetric_B_estimators_agree_with_the_closed_form_on_each_path(use_objective):
    closed = np.array([ref.bound_closed_form(x, B_OPTIMAL, START, END) for x in X])
    for seed, rate in enumerate((PATH_A, PATH_B)):
        mean, se = mean_se(estimate(model_for(B_OPTIMAL, rate=rate), 100_000, seed, use_objective))
        assert (np.abs(mean - closed) < 4 * se).all(), (mean - closed, se)


# --- 2. a denoiser that is the posterior mean of no distribution: the path matters ---------------


def test_non_symmetric_B_gives_each_path_its_own_bound():
    value_a, moved_a = quadrature(B_SKEW, PATH_A)
    value_b, moved_b = quadrature(B_SKEW, PATH_B)
    assert (moved_a < QUADRATURE_TOL).all() and (moved_b < QUADRATURE_TOL).all()
    est_a, se_a = mean_se(estimate(model_for(B_SKEW, rate=PATH_A), 200_000, seed=10))
    est_b, se_b = mean_se(estimate(model_for(B_SKEW, rate=PATH_B), 200_000, seed=11))
    # the estimator finds each path's own bound ...
    assert (np.abs(est_a - value_a) < 4 * se_a).all(), (est_a - value_a, se_a)
    assert (np.abs(est_b - value_b) < 4 * se_b).all(), (est_b - value_b, se_b)
    # ... and tells them apart: no single value lies within 4 SE of both estimates, and the
    # quadratures differ by far more than their own error
    assert (np.abs(est_a - est_b) > 4 * (se_a + se_b)).all(), (est_a - est_b, se_a, se_b)
    assert (np.abs(value_a - value_b) > 1e-8).all()


# --- 3. other ends: the bound moves by the closed-form endpoint terms ----------------------------


def endpoint_terms(x, B, start, end):
    """E log p(x | z_0) − KL(q(z_1|x) ‖ p(z_1)) − KL(q(z_0|x) ‖ p′_{λ(0)}) + KL(q(z_1|x) ‖ p′_{λ(1)})."""
    return (
        ref.reconstruction(start)
        - ref.prior_kl(x, end)
        - ref.kl_to_pushed_forward(x, B, start)
        + ref.kl_to_pushed_forward(x, B, end)
    )


def test_other_ends_change_the_bound_by_the_endpoint_terms():
    # each dimension's ends move differently (up, down, kept); under quadrature the path's
    # shape changes too, which must not matter
    start2, end2 = START + np.array([-6.0, 2.0, 0.0]), END + np.array([0.0, 5.0, -2.0])
    change = np.array(
        [
            endpoint_terms(x, B_OTHER, start2, end2) - endpoint_terms(x, B_OTHER, START, END)
            for x in X
        ]
    )
    value_1, moved_1 = quadrature(B_OTHER, PATH_A)
    value_2, moved_2 = quadrature(B_OTHER, PATH_B, start2, end2)
    assert (moved_1 < QUADRATURE_TOL).all() and (moved_2 < QUADRATURE_TOL).all()
    np.testing.assert_allclose(value_2 - value_1, change, rtol=0, atol=1e-8)
    # the estimator, paired: the same seed and path shape give both models the same t and ε
    # draws, so their difference has a far smaller SE than either
    draws_1 = estimate(model_for(B_OTHER, rate=PATH_A), 100_000, seed=20)
    draws_2 = estimate(model_for(B_OTHER, start2, end2, PATH_A), 100_000, seed=20)
    paired, paired_se = mean_se(draws_2 - draws_1)
    assert (np.abs(paired - change) < 4 * paired_se).all(), (paired - change, paired_se)
    # the ends do matter, by more than the estimator blurs and far more than quadrature errs
    assert (np.abs(change) > 4 * paired_se).all(), (change, paired_se)


# --- 4. the one-call estimator is unbiased for the integral over t at fixed noise ----------------


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_sampled_times_are_unbiased_for_the_integral_at_fixed_noise(sampler):
    model = model_for(B_SKEW, rate=PATH_B)
    noise = np.random.default_rng(3).standard_normal((len(X), D))
    integral = np.array(
        [
            ref.gauss_legendre(
                lambda t, x=x, e=e: ref.integrand(t, x, B_SKEW, START, END, PATH_B, e),
                tol=QUADRATURE_TOL,
            )[0]
            for x, e in zip(X, noise, strict=True)
        ]
    )
    bins = 50
    torch.manual_seed(4)
    timesteps = UniformTimesteps() if sampler == "uniform" else ImportanceTimesteps()
    xs = torch.as_tensor(X).repeat(20_000, 1)
    if sampler == "importance":
        # it learns from the objective itself, at fresh noise, as in training
        objective = ContinuousELBO(timesteps=timesteps, num_bins=bins)
        with torch.no_grad():
            for _ in range(5):
                objective.per_datum_loss(model, None, xs[:3000])
        probs = timesteps.probabilities(bins)
        assert timesteps.warm and not torch.allclose(probs, torch.full_like(probs, 1 / bins))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        t, w, _ = sample_times(timesteps, xs.shape[0], bins, xs.device, gen)
        ns = torch.as_tensor(noise).repeat(20_000, 1)
        draws = (w * diffusion_integrand(model, xs, t, ns)).reshape(20_000, len(X))
    mean, se = mean_se(draws)
    assert (np.abs(mean - integral) < 4 * se).all(), (mean - integral, se)


# --- 5. the vector I-MMSE relation, and where it fails -------------------------------------------


def central_difference(f, point: np.ndarray, j: int, h: float) -> tuple[float, float]:
    """∂f/∂v_j at ``point`` by central differences at step h/2, and a bound on its error: the
    change from step h (Richardson: the O(h²) error at h/2 is a third of that change) plus f's
    rounding, eps·|f| per evaluation, divided by the step."""

    def diff(step):
        up, down = point.copy(), point.copy()
        up[j] += step
        down[j] -= step
        return (f(up) - f(down)) / (2 * step), max(abs(f(up)), abs(f(down)))

    coarse, _ = diff(h)
    fine, size = diff(h / 2)
    return fine, abs(coarse - fine) + 4 * np.finfo(float).eps * size / (h / 2)


def test_vector_i_mmse_each_snr_derivative_of_the_information_is_half_the_mmse():
    snr = np.array([0.7, 2.5, 5.0])
    mmse = ref.mmse(SIGMA, snr)
    # a dimension's error as if it were alone (its marginal variance, no correlations)
    alone = 1.0 / (1.0 / np.diag(SIGMA) + snr)
    for j in range(D):
        grad, err = central_difference(lambda u: ref.mutual_information(SIGMA, u), snr, j, 1e-3)
        assert abs(grad - 0.5 * mmse[j]) < err, (j, grad, 0.5 * mmse[j], err)
        # the check sees the correlations: the marginal's error lies outside the band
        assert abs(grad - 0.5 * alone[j]) > err, (j, grad, 0.5 * alone[j], err)
    # and the per-datum K(λ) = KL(q(z_λ | x) ‖ p′_λ) of the other tests, averaged over x ~ N(0, Σ),
    # is this I (p′ = the data's own density): K is quadratic in x, so the mean over the 2D
    # points ±√D L e_i (L Lᵀ = Σ) is its exact expectation, equal to I up to rounding
    points = math.sqrt(D) * np.linalg.cholesky(SIGMA).T
    points = np.concatenate([points, -points])
    average = np.mean([ref.kl_to_pushed_forward(x, B_OPTIMAL, np.log(snr)) for x in points])
    assert abs(average - ref.mutual_information(SIGMA, snr)) < 1e-12, average


def kl_to_pushed_forward_at(B, x):
    return lambda lam: ref.kl_to_pushed_forward(x, B, lam)


def error_field(B, x, j):
    """λ ↦ F_j(λ) = ½ e^{λ_j} E_ε (x − x̂)_j² for the linear denoiser of B."""
    return lambda lam: 0.5 * np.exp(lam[j]) * ref.error_moments(x, B, lam)[j]


def test_the_errors_are_the_gradient_of_the_kl_exactly_when_B_is_symmetric():
    # per datum: ∂/∂λ_j KL(q(z_λ | x) ‖ p′_λ) = F_j(λ), the field whose line integral along the
    # path is the diffusion loss; for a non-symmetric B the field has a curl
    # (∂F_j/∂λ_k ≠ ∂F_k/∂λ_j), so it is the gradient of nothing and its line integral depends
    # on the path
    lam = np.array([1.0, -0.5, 2.0])
    h = 1e-3
    for x in X:
        for j in range(D):
            grad, err = central_difference(kl_to_pushed_forward_at(B_OTHER, x), lam, j, h)
            field = error_field(B_OTHER, x, j)(lam)
            assert abs(grad - field) < err, (j, grad, field, err)
        for B, symmetric in ((B_OTHER, True), (B_SKEW, False)):
            for j, k in ((0, 1), (0, 2), (1, 2)):
                d_jk, e_jk = central_difference(error_field(B, x, j), lam, k, h)
                d_kj, e_kj = central_difference(error_field(B, x, k), lam, j, h)
                # the same band both ways: inside it for symmetric B, outside it otherwise
                assert (abs(d_jk - d_kj) < e_jk + e_kj) == symmetric, (j, k, d_jk, d_kj)
