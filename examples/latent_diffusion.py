"""A VAE whose latent has a diffusion prior (LSGM), trained end to end by Pyro's SVI on the digits.

    python examples/latent_diffusion.py --quick     # seconds (what the tests run)
    python examples/latent_diffusion.py             # both VAEs to convergence (CPU-hours)

The encoder and the decoder are plain ``PyroModule``s; the prior over the latent z is a pyrodiff
``Diffusion`` entered into the model as ``pyro.sample("z", DiffusionPrior(prior))``, whose
log_prob is the prior's one-network-call ELBO. Pyro's ``Trace_ELBO`` then trains encoder,
decoder and prior together, and its value stays a lower bound on log p(x) (docs/guides.md,
"Models inside your own model"). The same VAE with an N(0, I) prior is trained the same way.

Each VAE trains in doublings of its updates (N, 2N, 4N, …) and stops when a doubling raises the
validation ELBO by less than 2 of its standard errors (over the validation images), the study's
rule; here the doublings continue one run rather than restart it, and the better of the last
two budgets on validation is the model kept (a copy of its parameters is taken at each
evaluation), so a doubling that over-fits is undone. The test split is read once,
at the end: ELBO per image and bits/dim (−ELBO / (64 ln 2) on the 17 grey levels, a bound), with
the standard error over the test images, beside the pixel-space default's test bits/dim
(docs/results/default_run.json). It also reports each VAE's time per update.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from _outputs import ROOT, add_output_arguments, outputs
from _tables import named_table
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, pyro_method
from torch import nn

import pyrodiff.optim
from pyrodiff import (
    Diffusion,
    DiffusionPrior,
    DiscretizedGaussianLikelihood,
    ForwardGuide,
    linear_schedule,
)
from pyrodiff.data import load_digits
from pyrodiff.infer import elbo_terms
from pyrodiff.networks import MLPDenoiser

# --- the user's code: a VAE with a pluggable prior over z ---------------------------------------


class Encoder(PyroModule):
    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent)
        )

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)


class Decoder(PyroModule):
    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, 64))
        self.log_scale = nn.Parameter(torch.full((64,), -2.0))
        self.pixels = DiscretizedGaussianLikelihood(17)  # a mass on the 17 grey levels

    def forward(self, z):
        loc = self.net(z).reshape(z.shape[:-1] + (1, 8, 8))
        scale = self.log_scale.exp().reshape(1, 8, 8).expand_as(loc)
        return self.pixels.distribution(loc, scale).to_event(3)


class VAE(PyroModule):
    def __init__(self, latent: int, hidden: int, prior: Diffusion | None) -> None:
        super().__init__()
        self.latent = latent
        self.encoder, self.decoder = Encoder(latent, hidden), Decoder(latent, hidden)
        self.prior = prior  # a pyrodiff Diffusion over z, or None for N(0, I)

    def p_z(self):
        if self.prior is None:
            return dist.Normal(0.0, 1.0).expand([self.latent]).to_event(1)
        return DiffusionPrior(self.prior)  # log_prob: the prior's one-call ELBO of z

    @pyro_method
    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.decoder(z), obs=x)

    @pyro_method
    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", self.encoder(x))


# --- training and evaluation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    latent: int = 8
    hidden: int = 256
    num_steps: int = 100
    batch: int = 128
    lr: float = 2e-3
    first_updates: int = 2000
    max_updates: int = 64000
    eval_draws: int = 10


QUICK = Settings(latent=4, hidden=32, num_steps=10, batch=32, first_updates=4, max_updates=8,
                 eval_draws=1)  # fmt: skip


def per_image_elbo(vae: VAE, x: torch.Tensor, draws: int) -> torch.Tensor:
    """log p(x | z) + log p(z) − log q(z | x) per image at z ~ q, averaged over ``draws``.

    For the diffusion prior log p(z) is replaced by its ELBO with every one of its T terms
    (``elbo_terms``: the same bound as DiffusionPrior's one-call estimate, with far less
    noise), so each value is an unbiased estimate of a lower bound on log p(x)."""
    total = torch.zeros(len(x), dtype=x.dtype)
    with torch.no_grad():
        for _ in range(draws):
            g = poutine.trace(vae.guide).get_trace(x)
            m = poutine.trace(poutine.replay(vae.model, trace=g)).get_trace(x)
            g.compute_log_prob()
            z = g.nodes["z"]["value"]
            if vae.prior is None:
                log_p_z = vae.p_z().log_prob(z)
            else:
                log_p_z = elbo_terms(vae.prior, ForwardGuide.for_model(vae.prior), z).elbo
            log_p_x = m.nodes["x"]["fn"].log_prob(x)
            total += log_p_x + log_p_z - g.nodes["z"]["log_prob"]
    return total / draws


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


def train(vae: VAE, data, s: Settings, say) -> dict:
    """Doubling rule on validation; returns the record of the model kept: the better of the
    last two budgets on validation, whose parameters ``vae`` holds on return."""
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, pyrodiff.optim.Adam({"lr": s.lr}), Trace_ELBO())
    gen = torch.Generator().manual_seed(0)
    done, budget, seconds, previous, history = 0, s.first_updates, 0.0, None, []
    snapshot: dict = {}  # the parameters at the last evaluation
    while True:
        start = time.perf_counter()
        for _ in range(budget - done):
            idx = torch.randint(0, len(data.train), (s.batch,), generator=gen)
            svi.step(data.train[idx])
        seconds += time.perf_counter() - start
        done = budget
        val = mean_se(per_image_elbo(vae, data.validation, s.eval_draws))
        history.append({"updates": done, "validation_elbo": val[0], "validation_se": val[1]})
        say(f"  {done:>6} updates: validation ELBO {val[0]:.2f} ± {val[1]:.2f} nats/image")
        converged = previous is not None and val[0] - previous[0] < 2 * previous[1]
        if converged or 2 * budget > s.max_updates:
            kept = done
            if snapshot and previous[0] > val[0]:
                # the doubling lowered the validation ELBO: go back to the shorter budget
                # (load_state_dict copies into the tensors the param store holds)
                vae.load_state_dict(snapshot)
                kept = done // 2
            return {"updates": kept, "trained_updates": done, "converged": converged,
                    "history": history, "ms_per_update": 1e3 * seconds / done}  # fmt: skip
        previous, budget = val, 2 * budget
        snapshot = copy.deepcopy(vae.state_dict())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--first-updates", type=int, default=None, help="the first budget N")
    parser.add_argument("--max-updates", type=int, default=None, help="the largest budget")
    add_output_arguments(parser, "latent_diffusion")
    args = parser.parse_args(argv)
    out = outputs(args, "latent_diffusion")
    s = QUICK if args.quick else Settings()
    if args.first_updates is not None:
        s = dataclasses.replace(s, first_updates=args.first_updates)
    if args.max_updates is not None:
        s = dataclasses.replace(s, max_updates=args.max_updates)
    torch.set_num_threads(1)
    data = load_digits()
    command = " ".join(
        ["python examples/latent_diffusion.py", *(argv if argv is not None else sys.argv[1:])]
    )
    results: dict = {"command": command, "settings": dataclasses.asdict(s)}
    per_image = {}
    for name in ("diffusion", "normal"):
        torch.manual_seed(0)
        prior = None
        if name == "diffusion":
            prior = Diffusion(MLPDenoiser(s.latent, hidden=s.hidden), linear_schedule(s.num_steps))
        vae = VAE(s.latent, s.hidden, prior)
        print(f"VAE with the {name} prior")
        record = train(vae, data, s, print)
        test = per_image_elbo(vae, data.test, s.eval_draws)
        per_image[name] = test
        elbo, se = mean_se(test)
        bpd = -elbo / (64 * math.log(2))
        record.update(test_elbo=elbo, test_se=se, test_bits_per_dim=bpd,
                      test_bits_per_dim_se=se / (64 * math.log(2)))  # fmt: skip
        print(f"  test ELBO {elbo:.2f} ± {se:.2f} nats/image, {bpd:.4f} bits/dim, "
              f"{record['ms_per_update']:.1f} ms/update")  # fmt: skip
        results[name] = record
    pixel = json.loads((ROOT / "docs" / "results" / "default_run.json").read_text())
    results["pixel_default_test_bits_per_dim"] = pixel["final_test"]["bits_per_dim"]
    # the difference on the same test images: paired, so its SE is that of the per-image gaps
    gain, gain_se = mean_se(per_image["diffusion"] - per_image["normal"])
    results["gain_nats"], results["gain_se"] = gain, gain_se
    cost = results["diffusion"]["ms_per_update"] / results["normal"]["ms_per_update"]
    results["cost_ratio"] = cost
    print(f"the diffusion prior buys {gain:.2f} ± {gain_se:.2f} nats/image over N(0, I), at "
          f"{cost:.2f}× the time "
          f"per update; pixel-space default: {results['pixel_default_test_bits_per_dim']:.4f} "
          "bits/dim")  # fmt: skip
    rows = [
        [
            label,
            f"{r['test_elbo']:.2f} ± {r['test_se']:.2f}",
            f"{r['test_bits_per_dim']:.4f} ± {r['test_bits_per_dim_se']:.4f}",
            r["updates"],
            "yes" if r["converged"] else "no",
            f"{r['ms_per_update']:.1f}",
        ]
        for label, r in (("diffusion (DiffusionPrior)", results["diffusion"]),
                         ("N(0, I)", results["normal"]))
    ]  # fmt: skip
    rows.append(["pixel-space default (no latent)", "—",
                 f"{results['pixel_default_test_bits_per_dim']:.4f}", "—", "—", "—"])  # fmt: skip
    header = ["prior over z", "test ELBO (nats/image)", "test bits/dim", "updates", "converged",
              "ms/update"]  # fmt: skip
    results["tables"] = {"comparison": named_table(header, rows)}
    path = out.write_results(results)
    print(f"results in {path}")
    return results


if __name__ == "__main__":
    main()
