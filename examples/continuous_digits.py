"""Digits with a continuous-time model: train on the T = ∞ bound, report test bits/dim.

    python examples/continuous_digits.py                  # the default budget (1500 updates)
    python examples/continuous_digits.py --updates 6000   # a longer one
    python examples/continuous_digits.py --quick          # seconds (what the tests run)

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

from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LearnedLogSNR, LinearLogSNR
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


def bound_bits(model, x: torch.Tensor, passes: int, seed: int) -> tuple[float, float]:
    """(mean bits/dim, its standard error) of the T = ∞ bound over ``passes`` draws per image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = [
            continuous_elbo_terms(model, x, LowDiscrepancyTimesteps(), generator=gen).bits_per_dim()
            for _ in range(passes)
        ]
    per_image = torch.stack(rows).mean(0)
    return per_image.mean().item(), (per_image.std() / math.sqrt(len(per_image))).item()


def build(args) -> ContinuousDiffusion:
    net = UNetDenoiser(1, 8, base=args.width, fourier_exponents=tuple(args.fourier))
    if args.schedule == "learned":
        schedule = LearnedLogSNR(
            log_snr_start=-args.gamma_min, log_snr_end=-args.gamma_max, endpoints=Endpoints.LEARNED
        )
    else:
        schedule = LinearLogSNR(log_snr_start=-args.gamma_min, log_snr_end=-args.gamma_max)
    return ContinuousDiffusion(net, schedule, likelihood=args.likelihood)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--updates", type=int, default=1500, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=32, help="U-Net base channels")
    parser.add_argument("--fourier", type=int, nargs="*", default=[3, 4, 5],
                        help="Fourier-feature exponents n (sin/cos of 2^n π x)")  # fmt: skip
    parser.add_argument("--schedule", choices=["learned", "linear"], default="learned")
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
        args.updates, args.batch_size, args.width = 3, 16, 8
    digits = get_dataset("digits")
    train, valid = digits.train, digits.validation
    args.likelihood = digits.likelihood()
    model = build(args)
    loss_fn = ContinuousELBO(
        timesteps=LowDiscrepancyTimesteps(), schedule_objective=ScheduleObjective.VARIANCE
    )
    if args.schedule != "learned":
        loss_fn = ContinuousELBO(timesteps=LowDiscrepancyTimesteps())
    loss = loss_fn(model, ContinuousForwardGuide())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = min(100, max(args.updates // 10, 1))

    def lr_at(n: int) -> float:
        if n < warmup:
            return (n + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (n - warmup) / max(args.updates - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(model, 0.995)
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
    passes = 1 if args.quick else 10
    with ema.applied():
        result["validation_bpd"], result["validation_se"] = bound_bits(model, valid, passes, 1)
        if args.test:
            result["test_bpd"], result["test_se"] = bound_bits(model, digits.test, passes, 2)
        l0, l1 = model.schedule.endpoints()  # λ(0), λ(1); recorded as VDM's γ = −λ
        result["gamma_0"], result["gamma_1"] = -l0.item(), -l1.item()
    print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"u{args.updates}_{args.schedule}_f{''.join(map(str, args.fourier)) or 'none'}"
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    torch.save(model.state_dict(), args.out / f"{tag}.pt")
    return result


if __name__ == "__main__":
    main()
