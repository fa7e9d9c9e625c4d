"""Digits with a continuous-time model: train on the T = ∞ bound, report test bits/dim.

    python examples/continuous_digits.py                  # the default budget (1500 updates)
    python examples/continuous_digits.py --updates 6000   # a longer one
    python examples/continuous_digits.py --quick          # seconds (what the tests run)
    python examples/continuous_digits.py --schedule adaptive --latent-dim 8 --dropout 0.1

``--schedule`` chooses the noise process: ``linear`` (fixed), ``learned`` (a learned scalar
log-SNR, its interior on the estimator's variance), ``per_dimension`` (a learned curve per pixel,
no latent) or ``adaptive`` (a curve per pixel conditioned on a latent z from an amortised
q(z | x): MuLAN). ``--num-steps T`` trains and evaluates the T-step bound of the same model
instead of T = ∞. Two runs evaluated with the same ``--eval-seed`` share every draw (t, ε, z),
so their per-image bounds (saved beside the result) compare pairwise.

Training uses the first 1300 training images; settings are chosen on the validation images
(the last 200 of the first 1500); the test split is read once, at the end, with the EMA
parameters. The bound is on the 17 grey levels (the decoder is the exact binned mass), so
bits/dim compare with the discrete default (README). Writes ``outputs/continuous_digits/``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pyrodiff import (
    AdaptiveDiffusion,
    AdaptiveNoiseGuide,
    Conditioning,
    ContinuousDiffusion,
    ContinuousForwardGuide,
    LearnedLogSNR,
    LinearLogSNR,
    MultivariateLogSNR,
)
from pyrodiff.data import get_dataset
from pyrodiff.infer import (
    ContinuousELBO,
    LowDiscrepancyTimesteps,
    ScheduleObjective,
    continuous_elbo_terms,
)
from pyrodiff.networks import UNetDenoiser
from pyrodiff.schedules import Endpoints
from pyrodiff.train.ema import EMA


def per_image_bits(
    model, x: torch.Tensor, passes: int, seed: int, guide=None, num_steps: int | None = None
) -> torch.Tensor:
    """Bits/dim of the bound per image, averaged over ``passes`` draws (seeded: every draw of
    t, ε and z comes from one generator)."""
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()  # dropout off
    with torch.no_grad():
        rows = [
            continuous_elbo_terms(
                model, x, LowDiscrepancyTimesteps(), generator=gen, guide=guide,
                num_steps=num_steps,
            ).bits_per_dim()
            for _ in range(passes)
        ]  # fmt: skip
    model.train(was)
    return torch.stack(rows).mean(0)


def bound_bits(model, x, passes, seed, guide=None, num_steps=None) -> tuple[float, float]:
    """(mean bits/dim, its standard error over images) of the bound."""
    per_image = per_image_bits(model, x, passes, seed, guide, num_steps)
    return per_image.mean().item(), (per_image.std() / math.sqrt(len(per_image))).item()


WIDTH = 32
"""The U-Net's base channels unless --width says otherwise (a run's file stem names any other)."""
QUICK = {"updates": 3, "batch_size": 16, "width": 8, "passes": 1}
"""The settings --quick replaces."""


def run_tag(args) -> str:
    """The file stem of a run's results: its budget, noise process and the settings that vary
    between the study's runs (the defaults leave the stems of earlier runs as they were)."""
    tag = f"u{args.updates}_{args.schedule}_f{''.join(map(str, args.fourier)) or 'none'}"
    if args.schedule == "adaptive" or args.dropout or args.num_steps:
        tag += f"_k{args.latent_dim}" * (args.schedule == "adaptive") + f"_d{args.dropout:g}"
        tag += f"_T{args.num_steps}" if args.num_steps else ""
    return tag + (f"_w{args.width}" if args.width != WIDTH else "")


def build(args):
    """(model, guide) for ``args.schedule``."""
    adaptive = args.schedule == "adaptive"
    net = UNetDenoiser(
        1, 8, base=args.width, fourier_exponents=tuple(args.fourier),
        latent_dim=args.latent_dim if adaptive else 0, dropout=args.dropout,
    )  # fmt: skip
    ends = {"log_snr_start": -args.gamma_min, "log_snr_end": -args.gamma_max}
    if adaptive:
        schedule = MultivariateLogSNR((1, 8, 8), args.latent_dim, **ends)
        model = AdaptiveDiffusion(net, schedule, args.latent_dim, likelihood=args.likelihood)
        return model, AdaptiveNoiseGuide.for_model(model)
    if args.schedule == "per_dimension":
        model = ContinuousDiffusion(
            net, MultivariateLogSNR((1, 8, 8), **ends), likelihood=args.likelihood,
            conditioning=Conditioning.TIME,
        )  # fmt: skip
        return model, ContinuousForwardGuide()
    if args.schedule == "learned":
        schedule = LearnedLogSNR(**ends, endpoints=Endpoints.LEARNED)
    else:
        schedule = LinearLogSNR(**ends)
    return ContinuousDiffusion(net, schedule, likelihood=args.likelihood), ContinuousForwardGuide()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--updates", type=int, default=1500, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=WIDTH, help="U-Net base channels")
    parser.add_argument("--fourier", type=int, nargs="*", default=[3, 4, 5],
                        help="Fourier-feature exponents n (sin/cos of 2^n π x)")  # fmt: skip
    parser.add_argument("--schedule", default="learned",
                        choices=["learned", "linear", "per_dimension", "adaptive"])  # fmt: skip
    parser.add_argument("--latent-dim", type=int, default=8, help="size of z (adaptive only)")
    parser.add_argument("--dropout", type=float, default=0.0, help="the denoiser's dropout")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="train and evaluate the T-step bound (default: T = ∞)")  # fmt: skip
    parser.add_argument("--passes", type=int, default=10, help="draws per image when evaluating")
    parser.add_argument("--also-steps", type=int, nargs="*", default=[],
                        help="also evaluate the validation bound of the T-step chain at these T")  # fmt: skip
    parser.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation draws")
    parser.add_argument("--gamma-min", type=float, default=-13.3, help="γ(0) = −λ(0), VDM's sign")
    parser.add_argument("--gamma-max", type=float, default=5.0, help="γ(1) = −λ(1), VDM's sign")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true", help="read the test split at the end")
    parser.add_argument("--out", type=Path, default=Path("outputs/continuous_digits"))
    args = parser.parse_args(argv)
    # one thread: the small U-Net gains little from more, and threads sharing busy cores wait
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if args.quick:
        vars(args).update(QUICK)
    digits = get_dataset("digits")
    train, valid = digits.train, digits.validation
    args.likelihood = digits.likelihood()
    model, guide = build(args)
    # the variance objective needs a scalar schedule's separable interior; a curve per pixel is
    # trained on the bound, which its path changes through the network (docs/path_invariance.md)
    objective = (
        ScheduleObjective.VARIANCE if args.schedule == "learned" else ScheduleObjective.BOUND
    )
    loss_fn = ContinuousELBO(
        timesteps=LowDiscrepancyTimesteps(), schedule_objective=objective, num_steps=args.num_steps
    )
    loss = loss_fn(model, guide)
    opt = torch.optim.Adam(loss.parameters(), lr=args.lr)
    warmup = min(100, max(args.updates // 10, 1))

    def lr_at(n: int) -> float:
        if n < warmup:
            return (n + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (n - warmup) / max(args.updates - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(loss, 0.995)
    start = time.process_time()
    wall = time.time()
    for n in range(args.updates):
        idx = torch.randint(0, len(train), (args.batch_size,))
        opt.zero_grad(set_to_none=True)
        value = loss(train[idx])
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update()
        if (n + 1) % 250 == 0:
            bpd = value.item() / (args.batch_size * 64 * math.log(2))
            print(f"update {n + 1}: train bound {bpd:.3f} bits/dim, {time.time() - wall:.0f}s",
                  flush=True)  # fmt: skip
    cpu_s = time.process_time() - start
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "likelihood")}}
    result["cpu_seconds"], result["wall_seconds"] = cpu_s, time.time() - wall
    ev = {"guide": guide if args.schedule == "adaptive" else None, "num_steps": args.num_steps}
    with ema.applied():
        valid_bits = per_image_bits(model, valid, args.passes, args.eval_seed, **ev)
        result["validation_bpd"] = valid_bits.mean().item()
        result["validation_se"] = (valid_bits.std() / math.sqrt(len(valid_bits))).item()
        for T in args.also_steps:
            bits = per_image_bits(model, valid, args.passes, args.eval_seed, guide=ev["guide"],
                                  num_steps=T)  # fmt: skip
            result.setdefault("validation_bpd_at", {})[str(T)] = [
                bits.mean().item(),
                (bits.std() / math.sqrt(len(bits))).item(),
            ]
        if args.test:
            result["test_bpd"], result["test_se"] = bound_bits(
                model, digits.test, args.passes, args.eval_seed + 1, **ev
            )
        z = guide.latent_moments(valid)[0] if args.schedule == "adaptive" else None
        l0, l1 = model.schedule_endpoints(latent=z)  # recorded as VDM's γ = −λ (pixel mean)
        result["gamma_0"], result["gamma_1"] = -l0.mean().item(), -l1.mean().item()
        if isinstance(model.schedule, MultivariateLogSNR):
            # λ(t) per pixel at five times (mean over the validation images' z): the learned
            # noise process as 8×8 images
            result["log_snr_per_pixel"] = {}
            for t in (0.0, 0.25, 0.5, 0.75, 1.0):
                n = 1 if z is None else z.shape[0]
                lam = model.log_snr_and_slope(torch.full((n,), t), latent=z)[0]
                result["log_snr_per_pixel"][str(t)] = lam.mean(0).flatten().tolist()
        state = loss.state_dict()
    print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = run_tag(args)
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    torch.save(state, args.out / f"{tag}.pt")
    torch.save(valid_bits, args.out / f"{tag}.valid_bits.pt")
    return result


if __name__ == "__main__":
    main()
