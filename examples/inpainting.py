"""Inpainting: the posterior p_θ(x_0 | y) of a trained digits model given the top half of an image.

    python examples/inpainting.py --quick                  # a tiny model, seconds
    pyrodiff train --out outputs/inpainting_run            # the default digits run
    python examples/inpainting.py --run outputs/inpainting_run --images 32 --particles 256 \
        --write-docs                                       # docs/inpainting.md

The trained diffusion model is the prior over x_0; y is a subset of x_0's pixels (the top
half). The decoder p_θ(x_0 | x_1) factorises over pixels, so with y = x_{0,obs}
p_θ(x_{1:T}, x_{0,miss} | y) ∝ p_θ(x_{1:T}) p_θ(y | x_1) p_θ(x_{0,miss} | x_1). Two samplers
target it, both consistent as K → ∞ (docs/inpainting.md):

- :func:`inpainting_model` is the Pyro program: the chain, then the observed pixels at an
  observed site (``obs=``) and the missing ones at a latent site. :func:`importance_posterior`
  runs it K times in one vectorised pass and weighs each particle by the density of its observed
  sites, as ``pyro.infer.Importance`` does with no guide: the proposal is the prior, so the
  weight is exactly the likelihood ratio p_θ(y | x_1) (SIR). Exact, but on the digits one
  particle takes all the weight: the decoder is sharper than a grey level.
- :func:`twisted_smc` walks the same chain with K particles per image, weighing them at every
  step by a potential that guesses p_θ(y | x_t) and resampling when the ESS drops; the weights
  telescope to p_θ(y | x_1), so any positive guess is valid. The digits results use it.

Reported for held-out test images: Σ over the missing pixels of log p_θ(x_i | y) (posterior
predictive, per pixel, :func:`pixel_log_predictive`) against Σ log p_θ(x_i) under the
unconditional model, their paired difference per image with its standard error over images,
and the Kish effective sample size (Σw)² / Σw² of both samplers.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from _outputs import add_output_arguments, outputs
from _tables import named_table
from torch import Tensor

from pyrodiff import Diffusion, PyrodiffError
from pyrodiff.config import RunConfig, build
from pyrodiff.gaussian import q_posterior_mean_coefs
from pyrodiff.train import fit

NAME = "inpainting"
OBSERVED_SITE = "y"
MISSING_SITE = "x_0_missing"


def top_half(event_shape: tuple[int, ...]) -> Tensor:
    """The mask of an image's observed pixels: its top half (rows < H/2), shaped like one image."""
    *_, h, w = event_shape
    mask = torch.zeros(event_shape, dtype=torch.bool)
    mask[..., : h // 2, :] = True
    return mask


def _pixelwise(d: dist.Distribution) -> dist.Distribution:
    """The per-pixel distribution under a decoder's ``to_event`` (and any pixel mask)."""
    while isinstance(d, (torch.distributions.Independent, dist.MaskedDistribution)):
        d = d.base_dist
    return d


def pixel_log_predictive(
    decoder: dist.Distribution, log_weights: Tensor | None, truth: Tensor
) -> Tensor:
    """log p̂(x_i = truth_i) for every pixel i of every image, shaped like ``truth`` (B, *event).

    ``decoder`` is p_θ(x_0 | x_1^k) per pixel, batch (K, B, *event). With ``log_weights``
    (K, B), the self-normalised estimate Σ_k W_k p_θ(x_i | x_1^k) of the posterior predictive
    p_θ(x_i | y); with None, the K · B particles are unconditional draws and are pooled for
    every image: (1 / KB) Σ p_θ(x_i | x_1^k), the model's marginal p_θ(x_i). One pixel at a
    time, a handful of effective particles estimates it well (a mixture over particles, not a
    product over pixels), which is why the example scores the missing pixels this way.
    """
    event_dim = truth.dim() - 1
    if log_weights is not None:
        lw = log_weights - torch.logsumexp(log_weights, 0)
        lw = lw.reshape(lw.shape + (1,) * event_dim)
        return torch.logsumexp(lw + decoder.log_prob(truth), 0)
    draws = math.log(decoder.batch_shape[0] * decoder.batch_shape[1])
    return torch.stack(
        [torch.logsumexp(decoder.log_prob(x).flatten(0, 1), 0) - draws for x in truth]
    )


def inpainting_model(
    diffusion: Diffusion, image: Tensor, observed: Tensor, num_particles: int = 1
) -> Tensor:
    """p_θ(x_{0:T}) for a batch of images whose ``observed`` pixels are conditioned on ``image``.

    Runs the reverse chain x_T → x_1 with ``num_particles`` particles per image, then the
    decoder p_θ(x_0 | x_1): the observed pixels of ``image`` are observed at site ``"y"`` (the
    decoder masked to them), the rest are drawn at site ``"x_0_missing"`` (the decoder masked to
    the others). Pixels of ``image`` outside ``observed`` are never read. Returns x_0 of shape
    (num_particles, batch, *event_shape) with the observed pixels equal to ``image``'s.
    """
    batch, T, event_dim = image.shape[0], diffusion.num_steps, len(diffusion.event_shape)
    with pyro.plate("particles", num_particles, dim=-2), pyro.plate("images", batch, dim=-1):
        x = pyro.sample(f"x_{T}", diffusion.prior(batch, like=image))
        for t in range(T, 1, -1):
            x = pyro.sample(f"x_{t - 1}", diffusion.reverse_kernel(x, t))
        decoder = _pixelwise(diffusion.reverse_kernel(x, 1))
        pyro.sample(OBSERVED_SITE, decoder.mask(observed).to_event(event_dim), obs=image)
        missing = pyro.sample(MISSING_SITE, decoder.mask(~observed).to_event(event_dim))
        return torch.where(observed, image, missing)


@dataclass(frozen=True)
class WeightedParticles:
    """K weighted draws per image from the prior proposal, and what their weights estimate.

    ``log_weights[k, b]`` is log p_θ(y_b | x_1^k); ``x0`` holds the proposal's x_0 (observed
    pixels set to y); ``missing`` is p_θ(x_{0,miss} | x_1^k) for every particle, batch (K, B).
    """

    log_weights: Tensor
    x0: Tensor
    missing: dist.Distribution

    @property
    def num_particles(self) -> int:
        return self.log_weights.shape[0]

    def ess(self) -> Tensor:
        """Kish's effective sample size (Σ_k w_k)² / Σ_k w_k² per image, in [1, K]."""
        lw = self.log_weights
        return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))

    def resample(self, num_draws: int) -> Tensor:
        """``num_draws`` posterior draws of x_0 per image (multinomial resampling by weight),
        shaped (num_draws, batch, *event_shape)."""
        index = dist.Categorical(logits=self.log_weights.T).sample((num_draws,))
        return self.x0[index, torch.arange(self.x0.shape[1])]

    @property
    def decoder(self) -> dist.Distribution:
        """p_θ(x_0 | x_1^k) per pixel, batch (K, B, *event)."""
        return _pixelwise(self.missing)


@torch.no_grad()
def importance_posterior(
    diffusion: Diffusion, image: Tensor, observed: Tensor, num_particles: int
) -> WeightedParticles:
    """Importance sampling of :func:`inpainting_model` with its prior as the proposal.

    One vectorised run of the program draws K particles per image from the prior; the log
    weight of a particle is the log-density of the observed sites in its trace, log p_θ(y | x_1)
    (the latent sites' densities are the same under target and proposal and cancel). Only the
    decoder's two sites are recorded, so memory does not grow with T.
    """
    program = poutine.block(inpainting_model, expose=[OBSERVED_SITE, MISSING_SITE])
    trace = poutine.trace(program).get_trace(diffusion, image, observed, num_particles)
    trace.compute_log_prob()
    log_weights = sum(
        site["log_prob"]
        for site in trace.nodes.values()
        if site["type"] == "sample" and site["is_observed"]
    )
    x0 = trace.nodes["_RETURN"]["value"]
    return WeightedParticles(log_weights, x0, trace.nodes[MISSING_SITE]["fn"])


def twist_variance(diffusion: Diffusion, t: int) -> float:
    """r_t² of the twisting potential at step t ≥ 2: 1 − ᾱ_{t−1}, the spread of x_0 given x_t for
    data of unit variance one step on (so the potential widens with the noise), plus the
    variance Δ²/12 of a grey-level bin of width Δ for a quantised decoder."""
    ab = diffusion.schedule.alpha_bar
    floor = 0.0
    likelihood = diffusion.likelihood
    levels = getattr(likelihood, "num_levels", None)
    if levels is not None:
        floor = ((likelihood.high - likelihood.low) / (levels - 1)) ** 2 / 12
    return float(1 - ab[t - 1]) + floor


@dataclass(frozen=True)
class SMCResult:
    """What :func:`twisted_smc` returns, per image b: ``log_evidence[b]`` = log Ẑ_b, an unbiased
    (in Ẑ) estimate of p_θ(y_b); ``log_weights`` (K, B) and ``x0`` (K, B, *event) the final
    weighted particles (observed pixels set to y); ``ess`` (B,) the final Kish ESS;
    ``resamples`` (B,) how many times each image's particles were resampled; ``decoder`` the
    final particles' p_θ(x_0 | x_1^k) per pixel, batch (K, B, *event); ``ancestors`` (B,) how
    many different particles of x_{⌊T/2⌋} the final K descend from (resampling narrows the
    genealogy: the particles can be distinct at the end yet share their middle of the chain)."""

    log_evidence: Tensor
    log_weights: Tensor
    x0: Tensor
    ess: Tensor
    resamples: Tensor
    decoder: dist.Distribution
    ancestors: Tensor

    def resample(self, num_draws: int) -> Tensor:
        """``num_draws`` posterior draws of x_0 per image, shaped (num_draws, B, *event)."""
        index = dist.Categorical(logits=self.log_weights.T).sample((num_draws,))
        return self.x0[index, torch.arange(self.x0.shape[1])]


@torch.no_grad()
def twisted_smc(
    diffusion: Diffusion,
    image: Tensor,
    observed: Tensor,
    num_particles: int,
    ess_threshold: float = 0.5,
) -> SMCResult:
    """Sequential Monte Carlo for p_θ(x_{0:T} | y) along the reverse chain, with twisting.

    The Feynman–Kac targets are γ_t(x_{t:T}) ∝ p_θ(x_{t:T}) g_t(x_t): the model's own chain
    down to x_t, times a potential g_t that guesses p_θ(y | x_t). For t ≥ 2,
    g_t(x_t) = Π_{i observed} N(y_i; x̂_0(x_t)_i, r_t²) (x̂_0 read off the reverse kernel's mean,
    r_t² from :func:`twist_variance`); at t = 1 the potential is the exact decoder likelihood
    p_θ(y | x_1), so the last target is the posterior itself. The proposal is the reverse kernel
    p_θ(x_{t−1} | x_t), so a particle's incremental weight is g_{t−1}(x_{t−1}) / g_t(x_t).
    Particles of an image are resampled (multinomially) when their Kish ESS falls below
    ``ess_threshold`` · K.

    Valid for any positive potentials: the weights telescope to exactly p_θ(y | x_1), so as K → ∞
    the weighted particles converge to p_θ(x_{0:T} | y), and Ẑ (the product over resampling
    epochs of the mean unnormalised weight) is an unbiased estimate of p_θ(y) for every K
    (log Ẑ is biased low, by Jensen). The potentials only decide how many particles survive.
    One network call per step for K · B particles.
    """
    batch, T = image.shape[0], diffusion.num_steps
    event_dim = len(diffusion.event_shape)
    log_k = math.log(num_particles)
    x = diffusion.prior(batch, like=image).sample((num_particles,))
    log_w = image.new_zeros(num_particles, batch)
    log_z = image.new_zeros(batch)
    log_g_prev = image.new_zeros(num_particles, batch)
    resamples = torch.zeros(batch, dtype=torch.long)
    # which particle of x_{T // 2} each particle descends from
    origin = torch.arange(num_particles)[:, None].expand(num_particles, batch)
    columns = torch.arange(batch)
    obs = observed.to(image.dtype)
    for t in range(T, 0, -1):
        kernel = diffusion.reverse_kernel(x, t)
        if t >= 2:
            c0, ct = q_posterior_mean_coefs(diffusion.schedule, t, x)
            x0_hat = (kernel.mean - ct * x) / c0
            r2 = twist_variance(diffusion, t)
            sq = ((image - x0_hat) ** 2 * obs).flatten(-event_dim).sum(-1)
            log_g = -0.5 * sq / r2 - 0.5 * float(obs.sum()) * math.log(2 * math.pi * r2)
        else:
            decoder = _pixelwise(kernel)
            log_g = decoder.mask(observed).to_event(event_dim).log_prob(image)
        log_w = log_w + log_g - log_g_prev
        log_g_prev = log_g
        x = kernel.sample()
        if t - 1 == T // 2:
            origin = torch.arange(num_particles)[:, None].expand(num_particles, batch)
        if t == 1:
            break
        ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
        low = ess < ess_threshold * num_particles
        if low.any():
            log_z = torch.where(low, log_z + torch.logsumexp(log_w, 0) - log_k, log_z)
            parents = dist.Categorical(logits=log_w.T).sample((num_particles,))
            keep = torch.arange(num_particles)[:, None].expand_as(parents)
            parents = torch.where(low, parents, keep)
            x = x[parents, columns]
            origin = origin[parents, columns]
            log_g_prev = log_g_prev[parents, columns]
            log_w = torch.where(low, torch.zeros_like(log_w), log_w)
            resamples += low.long()
    log_z = log_z + torch.logsumexp(log_w, 0) - log_k
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    x0 = torch.where(observed, image, x)
    ancestors = torch.tensor([origin[:, b].unique().numel() for b in range(batch)])
    return SMCResult(log_z, log_w, x0, ess, resamples, decoder, ancestors)


def missing_squared_error(
    x0: Tensor, log_weights: Tensor | None, truth: Tensor, observed: Tensor, to_levels
) -> Tensor:
    """E[(ℓ(x_i) − ℓ(truth_i))²] averaged over the missing pixels i, per image (B,), in grey
    levels² (ℓ = ``to_levels``): under the weighted particles ``x0`` (K, B, *event) with
    ``log_weights`` (K, B), or, with None, under all K · B particles pooled as unconditional
    draws for every image. Unlike a log predictive it stays finite and well estimated when the
    particles are few and each one is sure of its pixels."""
    missing = (~observed).double()
    count = missing.sum()
    levels, target = to_levels(x0).double(), to_levels(truth).double()
    if log_weights is not None:
        err = ((levels - target) ** 2 * missing).flatten(2).sum(-1) / count  # (K, B)
        return (torch.softmax(log_weights, 0).double() * err).sum(0)
    pooled = levels.flatten(0, 1)
    return torch.stack(
        [((pooled - t) ** 2 * missing).flatten(1).sum(-1).mean() / count for t in target]
    )


def distinct_particles(x0: Tensor) -> Tensor:
    """How many different x_0 the K particles of each image hold (B,): resampling copies
    particles, so this counts what survived of the K."""
    return torch.tensor(
        [torch.unique(x0[:, b].flatten(1), dim=0).shape[0] for b in range(x0.shape[1])]
    )


# --- the digits study -------------------------------------------------------------------------


def _prior_model(args: argparse.Namespace):
    """(the trained diffusion model, its data set, a description of where it came from)."""
    if args.run is not None:
        from pyrodiff.cli.runs import load_run

        loaded = load_run(args.run, device="cpu")
        source = {"run": str(args.run), "updates": loaded.step, "ema": loaded.used_ema}
        return loaded.model, loaded.built.dataset, loaded.config, source
    config = RunConfig()  # the defaults are the digits run
    if args.quick:
        config = config.replace(num_steps=10, width=8, updates=100, batch_size=32)
    model, guide, digits, loss = build(config)
    fit(model, guide, digits, loss=loss, **config.fit_options(), progress=not args.quick)
    model.eval()
    return model, digits, config, {"run": None, "updates": config.updates, "ema": False}


def _figure(truth: Tensor, observed: Tensor, draws: Tensor, path) -> None:
    """Rows: test images. Columns: the truth, what was observed (missing pixels in red), then
    posterior draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = truth.shape[0], 2 + draws.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols, 0.95 * rows + 0.4), squeeze=False)
    grey = matplotlib.colormaps["gray"].with_extremes(bad="tab:red")
    hidden = ~observed[0].cpu().numpy()
    for r in range(rows):
        panels = [truth[r, 0], truth[r, 0], *draws[:, r, 0]]
        for c, panel in enumerate(panels):
            img = panel.detach().cpu().double().numpy()
            if c == 1:
                img = np.ma.masked_array(img, mask=hidden)
            ax = axes[r, c]
            ax.imshow(img, cmap=grey, vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    for c, title in enumerate(["truth", "observed", *["draw"] * draws.shape[0]]):
        axes[0, c].set_title(title, fontsize=8)
    fig.suptitle("posterior draws given the top half (twisted SMC)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _mean_se(x: Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(x.numel())) if x.numel() > 1 else math.nan


def _pm(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, few images (seconds)")
    parser.add_argument("--run", default=None, help="a run folder to take the model from")
    parser.add_argument("--images", type=int, default=None, help="test images (default 32)")
    parser.add_argument("--particles", type=int, default=None, help="K per image (default 256)")
    parser.add_argument("--chunk", type=int, default=4, help="images per vectorised pass")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inference")
    add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    num_images = args.images or (4 if args.quick else 32)
    num_particles = args.particles or (64 if args.quick else 256)
    if num_images < 2 or num_particles < 2 or args.chunk < 1:
        parser.error(
            f"need --images >= 2, --particles >= 2 and --chunk >= 1; got {num_images}, "
            f"{num_particles}, {args.chunk}"
        )
    out = outputs(args, NAME)
    try:
        model, data, config, source = _prior_model(args)
    except PyrodiffError as exc:
        parser.error(str(exc))
    if data.num_levels is None or len(model.event_shape) != 3:
        parser.error(f"inpainting needs a model of quantised images; {data.name!r} is not")
    test = data.test[:num_images].to(next(model.parameters()).dtype)
    if test.shape[0] < num_images:
        parser.error(f"--images {num_images} is more than the {test.shape[0]} test images")
    top = top_half(model.event_shape)
    num_missing = int((~top).sum())

    def missing_sum(per_pixel: Tensor) -> Tensor:
        return torch.where(top, 0.0, per_pixel).flatten(1).sum(1)

    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    # unconditional draws: the Pyro program's prior particles (K per image of the first chunk,
    # independent of the images, so pooled for all of them); their SIR weights give its ESS
    sir = importance_posterior(model, test[: args.chunk], top, num_particles)
    sir_ess = sir.ess()
    prior = missing_sum(pixel_log_predictive(sir.decoder, None, test))
    to_levels = model.likelihood.to_levels
    prior_err = missing_squared_error(sir.x0, None, test, top, to_levels)
    post, post_err, log_z, ess, resamples, distinct, ancestors = [], [], [], [], [], [], []
    for i in range(0, num_images, args.chunk):
        image = test[i : i + args.chunk]
        run = twisted_smc(model, image, top, num_particles)
        post.append(missing_sum(pixel_log_predictive(run.decoder, run.log_weights, image)))
        post_err.append(missing_squared_error(run.x0, run.log_weights, image, top, to_levels))
        distinct.append(distinct_particles(run.x0))
        ancestors.append(run.ancestors)
        log_z.append(run.log_evidence)
        ess.append(run.ess)
        resamples.append(run.resamples)
        if i == 0:
            draws = run.resample(6)
    seconds = time.perf_counter() - start
    post, post_err, log_z = torch.cat(post), torch.cat(post_err), torch.cat(log_z)
    ess, resamples = torch.cat(ess), torch.cat(resamples).double()
    distinct, ancestors = torch.cat(distinct).double(), torch.cat(ancestors).double()
    summary = {
        "posterior_log_lik": _mean_se(post),
        "prior_log_lik": _mean_se(prior),
        "gain": _mean_se(post - prior),
    }
    error = {
        "posterior": _mean_se(post_err),
        "prior": _mean_se(prior_err),
        "difference": _mean_se(post_err - prior_err),
    }
    nats_per_bit = num_missing * math.log(2)  # nats per image → bits per missing pixel
    per_pixel = {k: (m / nats_per_bit, s / nats_per_bit) for k, (m, s) in summary.items()}
    ess_stats = {
        "mean": float(ess.mean()),
        "min": float(ess.min()),
        "max": float(ess.max()),
        "resamples_mean": float(resamples.mean()),
        "distinct_mean": float(distinct.mean()),
        "distinct_min": float(distinct.min()),
        "ancestors_mean": float(ancestors.mean()),
        "ancestors_min": float(ancestors.min()),
        "ancestors_max": float(ancestors.max()),
        "sir_mean": float(sir_ess.mean()),
        "sir_min": float(sir_ess.min()),
        "sir_max": float(sir_ess.max()),
        "sir_images": int(sir_ess.numel()),
    }
    table = named_table(
        [
            f"missing pixels: Σ_i log p(x_i) ({num_images} test images)",
            "nats/image",
            "bits per missing pixel",
        ],
        [
            ["posterior predictive, given the top half", _pm(summary["posterior_log_lik"], 2),
             _pm(per_pixel["posterior_log_lik"], 3)],
            ["unconditional model", _pm(summary["prior_log_lik"], 2),
             _pm(per_pixel["prior_log_lik"], 3)],
            ["paired difference", _pm(summary["gain"], 2), _pm(per_pixel["gain"], 3)],
        ],
    )  # fmt: skip
    ess_table = named_table(
        ["method", "particles K", "Kish ESS: mean", "min", "max", "resamplings",
         "distinct x_0: mean", f"ancestors at t = {model.num_steps // 2}: mean", "min", "max",
         "images"],
        [
            ["twisted SMC (final weights)", num_particles, f"{ess_stats['mean']:.1f}",
             f"{ess_stats['min']:.1f}", f"{ess_stats['max']:.1f}",
             f"{ess_stats['resamples_mean']:.1f}", f"{ess_stats['distinct_mean']:.1f}",
             f"{ess_stats['ancestors_mean']:.1f}", f"{ess_stats['ancestors_min']:.0f}",
             f"{ess_stats['ancestors_max']:.0f}", num_images],
            ["SIR, prior proposal", num_particles, f"{ess_stats['sir_mean']:.1f}",
             f"{ess_stats['sir_min']:.1f}", f"{ess_stats['sir_max']:.1f}", "—", "—", "—", "—",
             "—", ess_stats["sir_images"]],
        ],
    )  # fmt: skip
    error_table = named_table(
        [f"missing pixels ({num_images} test images)", "E (draw − truth)², grey levels²"],
        [
            ["posterior draws (SMC)", _pm(error["posterior"], 2)],
            ["unconditional draws", _pm(error["prior"], 2)],
            ["paired difference", _pm(error["difference"], 2)],
        ],
    )
    for line in (
        f"missing pixels, posterior predictive Σ log p(x_i | y) {_pm(summary['posterior_log_lik'], 3)}",
        f"missing pixels, unconditional        Σ log p(x_i)     {_pm(summary['prior_log_lik'], 3)}",
        f"paired difference {_pm(summary['gain'], 3)} nats/image "
        f"({num_images} images, {num_missing} missing pixels each)",
        f"squared error of a missing pixel (grey levels²): posterior "
        f"{_pm(error['posterior'], 3)}, unconditional {_pm(error['prior'], 3)}, "
        f"difference {_pm(error['difference'], 3)}",
        f"SMC particles at the end: {ess_stats['distinct_mean']:.1f} distinct x_0 of "
        f"{num_particles} on average, from {ess_stats['ancestors_mean']:.1f} ancestors at "
        f"t = {model.num_steps // 2}",
        f"Kish ESS of K = {num_particles}: SMC mean {ess_stats['mean']:.1f} "
        f"(range {ess_stats['min']:.1f} … {ess_stats['max']:.1f}); SIR mean "
        f"{ess_stats['sir_mean']:.1f} (range {ess_stats['sir_min']:.1f} … "
        f"{ess_stats['sir_max']:.1f})",
        f"wall time {seconds:.1f} s",
    ):
        print(line)

    fig_path = out.figure("inpainting.png")
    _figure(test[: draws.shape[1]], top, draws, fig_path)
    results = {
        "model": {"configuration": config.to_dict(), **source},
        "observed": f"top half: {int(top.sum())} of {top.numel()} pixels",
        "num_images": num_images,
        "num_particles": num_particles,
        "prior_draws": int(sir.log_weights.numel()),
        "seed": args.seed,
        "wall_seconds": seconds,
        "summary": {k: list(v) for k, v in summary.items()},
        "bits_per_missing_pixel": {k: list(v) for k, v in per_pixel.items()},
        "squared_error": {k: list(v) for k, v in error.items()},
        "ess": ess_stats,
        "per_image": {
            "posterior_log_lik": post.tolist(),
            "prior_log_lik": prior.tolist(),
            "posterior_squared_error": post_err.tolist(),
            "prior_squared_error": prior_err.tolist(),
            "distinct_particles": distinct.tolist(),
            "ancestors_mid_chain": ancestors.tolist(),
            "log_z_observed": log_z.tolist(),
            "ess": ess.tolist(),
        },
        "tables": {"summary": table, "ess": ess_table, "error": error_table},
    }
    path = out.write_results(results)
    print(f"figure {fig_path}, results {path}")
    return {**results, "draws": draws, "test": test, "observed_mask": top}


if __name__ == "__main__":
    main()
