"""Inpainting with a diffusion prior (examples/inpainting.py): its importance resampling and its
twisted SMC recover the closed-form posterior of a linear-Gaussian model, its evidence estimate
is unbiased, and its quick run reports what its results file says."""

import json
import math

import pyro
import pytest
import reference
import torch

from pyrodiff import linear_schedule
from pyrodiff.models import gaussian_oracle

D, T = 4, 6
OBSERVED = torch.tensor([True, False, True, False])
KEYS = ("posterior_log_lik", "prior_log_lik")


def _correlated_model():
    """A linear-Gaussian diffusion over D = 4 whose marginal p_θ(x_0) has strong correlations:
    the oracle's structure with its denoiser replaced by E[x_0 | x_t] for x_0 ~ N(m, Σ), Σ_ij =
    0.6 · 0.8^|i−j| (the kernel variances stay the isotropic oracle's, so p_θ(x_0) is near, not
    at, N(m, Σ); the test reads the model's exact marginal from its weights), and a decoder
    variance 0.05, wide enough for importance sampling from the prior to keep particles."""
    schedule = linear_schedule(T)
    mean = torch.tensor([0.3, -0.2, 0.1, 0.4])
    model = gaussian_oracle(schedule, mean, 0.77)
    i = torch.arange(D)
    sigma = 0.6 * 0.8 ** (i[:, None] - i[None, :]).abs().double()
    ab = schedule.alpha_bar.double()
    eye = torch.eye(D, dtype=torch.float64)
    with torch.no_grad():
        for t in range(1, T + 1):
            a = ab[t]
            gain = a.sqrt() * sigma @ torch.linalg.inv(a * sigma + (1 - a) * eye)
            model.denoiser.weight[t] = gain
            model.denoiser.bias[t] = (eye - a.sqrt() * gain) @ mean
        model.log_variance[1] = math.log(0.05)
    return model


def _exact_posterior(model, y):
    """The Schur complement of p_θ(x_0)'s covariance: the mean and covariance of the missing
    coordinates given the observed ones, and the log density of the observed ones."""
    mu, cov = reference.marginal(reference.from_model(model))
    o, m = OBSERVED, ~OBSERVED
    gain = cov[m][:, o] @ torch.linalg.inv(cov[o][:, o])
    post_mean = mu[m] + gain @ (y[o] - mu[o])
    post_cov = cov[m][:, m] - gain @ cov[o][:, m]
    log_py = reference.log_normal(y[o][None], mu[o], cov[o][:, o])[0]
    return post_mean, post_cov, log_py, (mu, cov)


def _infer(example, method, model, image, num_particles):
    if method == "sir":
        return example.importance_posterior(model, image, OBSERVED, num_particles)
    return example.twisted_smc(model, image, OBSERVED, num_particles)


@pytest.mark.parametrize("method", ["sir", "smc"])
def test_posterior_of_a_linear_gaussian_model_matches_its_closed_form(load_example, method):
    example = load_example("inpainting")
    model = _correlated_model()
    mu, cov = reference.marginal(reference.from_model(model))
    y = mu + 1.5 * cov.diagonal().sqrt() * torch.tensor([1.0, 0.0, -1.0, 0.0])
    exact_mean, exact_cov, _, _ = _exact_posterior(model, y)
    replicas, K = 24, 4096
    image = y.expand(replicas, D).clone()  # R independent runs on the same observation
    pyro.set_rng_seed(1)
    draws = _infer(example, method, model, image, K).resample(K)[..., ~OBSERVED]  # (K, R, 2)
    assert torch.equal(
        _infer(example, method, model, image, 8).resample(8)[..., OBSERVED],
        y[OBSERVED].expand(8, replicas, 2),
    )
    means = draws.mean(0)  # (R, 2)
    centred = draws - means
    covs = torch.einsum("kri,krj->rij", centred, centred) / (K - 1)  # (R, 2, 2)
    se_mean = means.std(0) / math.sqrt(replicas)
    z_mean = (means.mean(0) - exact_mean) / se_mean
    assert z_mean.abs().max() < 4, (means.mean(0), exact_mean, se_mean)
    z_cov = (covs.mean(0) - exact_cov) / (covs.std(0) / math.sqrt(replicas))
    assert z_cov.abs().max() < 4, (covs.mean(0), exact_cov)
    # the test has power: conditioning moves the mean and shrinks the variance by many SE
    prior_mean, prior_cov = mu[~OBSERVED], cov[~OBSERVED][:, ~OBSERVED]
    assert ((exact_mean - prior_mean).abs() / se_mean).max() > 20
    assert ((prior_cov - exact_cov).diagonal() / covs.std(0).diagonal()).min() > 3


@pytest.mark.parametrize("ess_threshold", [0.5, 1.0])
@pytest.mark.parametrize("observed", ["partial", "all"])
def test_smc_evidence_estimate_is_unbiased(load_example, observed, ess_threshold):
    """E[Ẑ] = p_θ(y) for every K: the mean of Ẑ / p(y) over replicas is 1 within 4 SE, with
    the default resampling rule and with resampling at every step."""
    example = load_example("inpainting")
    model = _correlated_model()
    mu, cov = reference.marginal(reference.from_model(model))
    mask = OBSERVED if observed == "partial" else torch.ones(D, dtype=torch.bool)
    y = mu + cov.diagonal().sqrt() * torch.tensor([1.0, -0.5, -1.0, 0.5])
    exact = reference.log_normal(y[mask][None], mu[mask], cov[mask][:, mask])[0]
    replicas = 1000
    pyro.set_rng_seed(2)
    run = example.twisted_smc(model, y.expand(replicas, D).clone(), mask, 256, ess_threshold)
    ratio = (run.log_evidence - exact).exp()
    se = ratio.std() / math.sqrt(replicas)
    assert abs(ratio.mean() - 1) < 4 * se, (ratio.mean(), se)
    assert se < 0.05  # the check is sharp enough to see a wrong constant
    if ess_threshold == 1.0:
        assert (run.resamples == T - 1).all()  # every step between x_T and x_1 resampled


@pytest.mark.parametrize("method", ["sir", "smc"])
def test_missing_pixels_of_the_image_are_never_used(load_example, method):
    example = load_example("inpainting")
    model = _correlated_model()
    image = torch.randn(3, D)
    other = torch.where(OBSERVED, image, torch.randn(3, D) * 10)
    runs = []
    for x in (image, other):
        pyro.set_rng_seed(3)
        runs.append(_infer(example, method, model, x, 16))
    a, b = runs
    assert torch.equal(a.log_weights, b.log_weights) and torch.equal(a.x0, b.x0)


def test_sir_weight_is_the_observed_sites_density_and_its_ess_is_kish(load_example):
    """The weight is log p(y | x_1) of the decoder at each particle, and ESS = (Σw)² / Σw²."""
    example = load_example("inpainting")
    model = _correlated_model()
    image = torch.randn(2, D)
    pyro.set_rng_seed(4)
    run = example.importance_posterior(model, image, OBSERVED, 32)
    # the decoder is N(loc, σ_1²) per coordinate; the missing site holds it for every particle
    decoder = run.missing
    while isinstance(decoder, torch.distributions.Independent):
        decoder = decoder.base_dist
    while hasattr(decoder, "base_dist"):
        decoder = decoder.base_dist
    expected = torch.distributions.Normal(decoder.loc, decoder.scale).log_prob(image)
    assert torch.allclose(run.log_weights, expected[..., OBSERVED].sum(-1))
    w = run.log_weights.exp()
    assert torch.allclose(run.ess(), w.sum(0) ** 2 / (w**2).sum(0))


def test_quick_run_reports_what_its_results_file_says(tmp_path, capsys, load_example):
    torch.set_default_dtype(torch.float32)  # as a user runs it
    out = load_example("inpainting").main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "inpainting.json").read_text())
    assert (tmp_path / "inpainting.png").stat().st_size > 0
    per = results["per_image"]
    post, prior = (torch.tensor(per[k], dtype=torch.float64) for k in KEYS)
    n = results["num_images"]
    assert post.numel() == prior.numel() == n
    gain, se = results["summary"]["gain"]
    assert math.isclose(gain, float((post - prior).mean()), rel_tol=1e-6)
    assert math.isclose(se, float((post - prior).std() / math.sqrt(n)), rel_tol=1e-6)
    assert f"{results['summary']['posterior_log_lik'][0]:.3f}" in printed
    # a discretised decoder's predictive is a probability mass: log ≤ 0 for every pixel
    assert (post <= 0).all() and (prior <= 0).all()
    err = {
        k: torch.tensor(per[f"{k}_squared_error"], dtype=torch.float64)
        for k in ("posterior", "prior")
    }
    assert math.isclose(
        results["squared_error"]["difference"][0],
        float((err["posterior"] - err["prior"]).mean()),
        rel_tol=1e-6,
    )
    # the tables are printed into markdown: a "|" inside a cell would split it
    for table in results["tables"].values():
        assert not any("|" in c for c in [*table["header"], *sum(table["rows"], [])])
    for key in ("distinct_particles", "ancestors_mid_chain"):
        assert all(1 <= d <= results["num_particles"] for d in per[key])
    ess = torch.tensor(per["ess"])
    K = results["num_particles"]
    assert ((ess >= 1 - 1e-3) & (ess <= K * (1 + 1e-3))).all()  # float32 round-off
    # draws keep the observed pixels and sit on the 17 grey levels
    top, draws = out["observed_mask"], out["draws"]
    truth = out["test"][: draws.shape[1]]
    assert torch.equal(draws[..., top], truth[..., top].expand_as(draws[..., top]))
    levels = (draws + 1) * 8
    assert torch.allclose(levels, levels.round(), atol=1e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--particles", "1"], "need --images >= 2, --particles >= 2"),
        (["--run", "/no/such/run"], "run folder /no/such/run does not exist"),
    ],
)
def test_bad_arguments_get_one_error_line(load_example, capsys, argv, message):
    with pytest.raises(SystemExit):
        load_example("inpainting").main(argv)
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_pixel_scores_are_the_weighted_mixture_and_the_weighted_squared_error(load_example):
    example = load_example("inpainting")
    # K = 2 particles, B = 1 image of 2 pixels; the second pixel is missing
    loc = torch.tensor([[[0.0, 1.0]], [[2.0, -1.0]]])  # (K, B, 2)
    decoder = torch.distributions.Normal(loc, 0.5)
    truth = torch.tensor([[0.5, 0.0]])
    log_w = torch.tensor([[math.log(3.0)], [0.0]])  # normalised weights 3/4, 1/4
    got = example.pixel_log_predictive(decoder, log_w, truth)
    p = decoder.log_prob(truth).exp()
    assert torch.allclose(got, (0.75 * p[0] + 0.25 * p[1]).log())
    # unconditional: both particles pooled with equal weight, for every image
    pooled = example.pixel_log_predictive(decoder, None, truth)
    assert torch.allclose(pooled, (0.5 * p[0] + 0.5 * p[1]).log())
    observed = torch.tensor([True, False])
    x0 = torch.tensor([[[0.0, 3.0]], [[0.0, -2.0]]])
    err = example.missing_squared_error(x0, log_w, truth, observed, lambda x: x)
    assert torch.allclose(err, torch.tensor([0.75 * 9 + 0.25 * 4]))
    err = example.missing_squared_error(x0, None, truth, observed, lambda x: x)
    assert torch.allclose(err, torch.tensor([0.5 * 9 + 0.5 * 4]))
    assert example.distinct_particles(torch.cat([x0, x0[:1]])).tolist() == [2]
