"""pyrodiff against plain PyTorch, in the same process, on the same network, batch and device.

    python benchmarks/run.py --quick      # < 2 minutes on 2 CPU cores
    python benchmarks/run.py              # more rounds and calls: stable figures

Prints a table, then as its last line one JSON object with every figure. Each ratio is
pyrodiff's time over the hand-written baseline's (benchmarks/baselines.py), the median of
within-round ratios over interleaved rounds (benchmarks/timing.py). Peak memory is the rise of
the process's peak resident set size during one evaluation, in a fresh subprocess per figure:
the kernel's peak mark is reset just before (``/proc/self/clear_refs``) and read just after
(``VmHWM``); on CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
from baselines import (  # noqa: E402
    PlainTables,
    ancestral_loop,
    ddpm_step,
    full_bound,
    iwae_log_weights,
    literal_chain_step,
    vdm_step,
)
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from timing import interleaved  # noqa: E402

import pyrodiff.optim as joint_optim  # noqa: E402
from pyrodiff import (  # noqa: E402
    Diffusion,
    DiscretizedGaussianLikelihood,
    ForwardGuide,
    linear_schedule,
)
from pyrodiff.devices import resolve_device  # noqa: E402
from pyrodiff.infer import DiffusionELBO, elbo_terms, iwae_bound  # noqa: E402
from pyrodiff.modules import parameter_count  # noqa: E402
from pyrodiff.networks import MLPDenoiser, UNetDenoiser  # noqa: E402
from pyrodiff.sampling import ancestral_sample  # noqa: E402


@dataclass(frozen=True)
class Effort:
    """How many rounds and calls each measurement gets.

    A round times each case for ``calls`` consecutive calls; the finer the interleaving, the
    more alike the conditions each within-round ratio compares (on this machine a U-Net step
    alternated call by call gave ratios within ±0.02 over repeats, in blocks of three ±0.06).
    """

    train_rounds_digits: int
    train_calls_digits: int
    train_rounds_2d: int
    train_calls_2d: int
    eval_rounds: int
    literal_calls: int
    sample_rounds: int


QUICK = Effort(
    train_rounds_digits=15,
    train_calls_digits=1,
    train_rounds_2d=5,
    train_calls_2d=20,
    eval_rounds=5,
    literal_calls=1,
    sample_rounds=5,
)
FULL = Effort(
    train_rounds_digits=35,
    train_calls_digits=2,
    train_rounds_2d=11,
    train_calls_2d=60,
    eval_rounds=7,
    literal_calls=3,
    sample_rounds=7,
)


@dataclass(frozen=True)
class Setup:
    """One configuration: a model/guide pair and a batch, all on one device."""

    name: str
    model: Diffusion
    guide: ForwardGuide
    x: torch.Tensor
    num_levels: int | None

    def tables(self) -> PlainTables:
        return PlainTables.from_schedule(self.model.schedule, self.x.dtype, self.x.device)


def digits_setup(device: torch.device, num_steps: int = 1000, batch: int = 128) -> Setup:
    from pyrodiff.data import load_digits

    data = load_digits()
    torch.manual_seed(0)
    sched = linear_schedule(num_steps)
    net = UNetDenoiser(1, 8, base=32)
    model = Diffusion(net, sched, likelihood=DiscretizedGaussianLikelihood(data.num_levels))
    x = data.train[:batch].to(device=device, dtype=torch.float32)
    return Setup("digits", model.to(device), ForwardGuide(sched).to(device), x, data.num_levels)


def two_d_setup(device: torch.device, num_steps: int = 1000, batch: int = 256) -> Setup:
    gen = torch.Generator().manual_seed(0)
    # a ring of eight Gaussians: the data only has to be fixed, not interesting
    angle = torch.randint(0, 8, (batch,), generator=gen) * (torch.pi / 4)
    x = torch.stack([angle.cos(), angle.sin()], 1) * 2 + 0.1 * torch.randn(batch, 2, generator=gen)
    torch.manual_seed(0)
    sched = linear_schedule(num_steps)
    model = Diffusion(MLPDenoiser(2), sched)
    return Setup("2d", model.to(device), ForwardGuide(sched).to(device), x.to(device), None)


def mlp64_setup(device: torch.device, num_steps: int = 1000, batch: int = 128) -> Setup:
    """The digits flattened to 64 values, an MLP of width 512: a small network, where the
    per-step work around the network call is the largest share of a step."""
    from pyrodiff.data import load_digits

    data = load_digits()
    torch.manual_seed(0)
    sched = linear_schedule(num_steps)
    lik = DiscretizedGaussianLikelihood(data.num_levels)
    model = Diffusion(MLPDenoiser(64, hidden=512), sched, likelihood=lik)
    x = data.train[:batch].reshape(batch, 64).to(device=device, dtype=torch.float32)
    return Setup("mlp64", model.to(device), ForwardGuide(sched).to(device), x, data.num_levels)


def bench_train_step(s: Setup, rounds: int, calls: int) -> dict[str, float]:
    """SVI with DiffusionELBO (with pyrodiff.optim.Adam, one torch Adam for all parameters,
    and with pyro.optim.Adam, one per tensor) and the ELBO module with torch.optim.Adam,
    against a DDPM step (L_simple) with torch.optim.Adam on a copy of the same network.

    Both SVI objects train the same model (its parameters are the param store's); each
    optimizer keeps its own state, which is all that matters for the timing."""
    pyro.clear_param_store()
    tab = s.tables()
    plain_net = copy.deepcopy(s.model.denoiser)
    plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-4)
    svi = SVI(s.model, s.guide, joint_optim.Adam({"lr": 1e-4}), DiffusionELBO())
    svi_pyro = SVI(s.model, s.guide, pyro.optim.Adam({"lr": 1e-4}), DiffusionELBO())
    module_model = copy.deepcopy(s.model)
    loss_module = DiffusionELBO()(module_model, s.guide)
    module_opt = torch.optim.Adam(loss_module.parameters(), lr=1e-4)

    def module_step() -> None:
        module_opt.zero_grad(set_to_none=True)
        loss_module(s.x).backward()
        module_opt.step()

    t = interleaved(
        {
            "plain": lambda: ddpm_step(plain_net, plain_opt, s.x, tab),
            "svi": lambda: svi.step(s.x),
            "svi_pyro_optim": lambda: svi_pyro.step(s.x),
            "module": module_step,
        },
        rounds=rounds,
        calls=calls,
        warmup=2,
        device=s.x.device,
    )
    return {
        "plain_ms": 1e3 * t.median("plain"),
        "svi_ms": 1e3 * t.median("svi"),
        "module_ms": 1e3 * t.median("module"),
        "svi_pyro_optim_ms": 1e3 * t.median("svi_pyro_optim"),
        "svi_ratio": t.ratio("svi", "plain"),
        "svi_pyro_optim_ratio": t.ratio("svi_pyro_optim", "plain"),
        "module_ratio": t.ratio("module", "plain"),
        "svi_spread": t.spread("svi", "plain"),
    }


def bench_continuous_step(
    device: torch.device, rounds: int, calls: int, rows: list, result: dict
) -> None:
    """SVI with ContinuousELBO (the T = ∞ bound, pyrodiff.optim.Adam) on a ContinuousDiffusion
    against a hand-written VDM step with torch.optim.Adam on a copy of the same U-Net, digits,
    batch 128; adds ``continuous_step_ratio`` to ``result`` and a row to ``rows``."""
    from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LinearLogSNR
    from pyrodiff.data import load_digits
    from pyrodiff.infer import ContinuousELBO

    data = load_digits()
    torch.manual_seed(0)
    lik = DiscretizedGaussianLikelihood(data.num_levels)
    model = ContinuousDiffusion(
        UNetDenoiser(1, 8, base=32), LinearLogSNR(log_snr_start=13.3, log_snr_end=-5.0), lik
    )
    model = model.to(device)
    x = data.train[:128].to(device=device, dtype=torch.float32)
    pyro.clear_param_store()
    plain_net = copy.deepcopy(model.denoiser)
    plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-4)
    svi = SVI(model, ContinuousForwardGuide(), joint_optim.Adam({"lr": 1e-4}), ContinuousELBO())
    t = interleaved(
        {
            "plain": lambda: vdm_step(plain_net, plain_opt, x, -13.3, 5.0, data.num_levels),
            "svi": lambda: svi.step(x),
        },
        rounds=rounds,
        calls=calls,
        warmup=2,
        device=x.device,
    )
    result["continuous_step_ratio"] = t.ratio("svi", "plain")
    rows.append(
        (
            "continuous-time train step (T = ∞ bound), digits, B=128",
            f"{1e3 * t.median('plain'):.1f} ms",
            f"{1e3 * t.median('svi'):.1f} ms",
            f"{result['continuous_step_ratio']:.3f}",
        )
    )


def _continuous_pair(name: str, device: torch.device, latent_dim: int):
    """(model, guide, x) for :func:`bench_adaptive_step`: the digits U-Net (base 32, batch 128,
    17-level decoder) or the 2-D MLP (width 128, batch 256), as a ContinuousDiffusion over a
    fixed linear log-SNR with the forward process (``latent_dim`` 0), or as an
    AdaptiveDiffusion with a latent z of ``latent_dim`` and its AdaptiveNoiseGuide."""
    from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LinearLogSNR
    from pyrodiff.guides import AdaptiveNoiseGuide
    from pyrodiff.models import AdaptiveDiffusion, Conditioning
    from pyrodiff.schedules import MultivariateLogSNR

    torch.manual_seed(0)
    if name == "digits":
        from pyrodiff.data import load_digits

        data = load_digits()
        net = UNetDenoiser(1, 8, base=32, latent_dim=latent_dim)
        lik = DiscretizedGaussianLikelihood(data.num_levels)
        x = data.train[:128].to(device=device, dtype=torch.float32)
    else:
        net, lik, x = MLPDenoiser(2, latent_dim=latent_dim), None, two_d_setup(device).x
    shape = tuple(x.shape[1:])
    if not latent_dim:
        # told t, as the adaptive model's denoiser is: the two differ by z alone
        model = ContinuousDiffusion(
            net,
            LinearLogSNR(log_snr_start=13.3, log_snr_end=-5.0),
            lik,
            conditioning=Conditioning.TIME,
            event_shape=shape,
        )
        return model.to(device), ContinuousForwardGuide(), x
    schedule = MultivariateLogSNR(shape, latent_dim, log_snr_start=13.3, log_snr_end=-5.0)
    model = AdaptiveDiffusion(net, schedule, latent_dim, lik, event_shape=shape).to(device)
    guide = AdaptiveNoiseGuide.for_model(model, hidden=ADAPTIVE_GUIDE_HIDDEN)
    return model, guide.to(device), x


ADAPTIVE_LATENT_DIM = 8
"""z's size in ``adaptive_step_ratio``: the command line's default (--latent-dim)."""
ADAPTIVE_GUIDE_HIDDEN = 64
"""The encoder's width in ``adaptive_step_ratio``: the command line's default (--guide-hidden)."""


def bench_adaptive_step(
    device: torch.device, rounds: dict[str, tuple[int, int]], rows: list, result: dict
) -> None:
    """An SVI step (ContinuousELBO, pyrodiff.optim.Adam) of an AdaptiveDiffusion with its
    AdaptiveNoiseGuide against one of a ContinuousDiffusion with the same denoiser architecture
    without z, a fixed schedule and the forward process, same batch, interleaved; adds
    ``adaptive_step_ratio`` (digits U-Net) and ``adaptive_step_ratio_2d`` (2-D MLP) and their
    rows, and ``adaptive_parameter_ratio[_2d]``, the ratio of the two cases' parameter counts.
    ``rounds`` maps each case to its (rounds, calls)."""
    from pyrodiff.infer import ContinuousELBO

    for name, key in (("digits", ""), ("2d", "_2d")):
        steps, sizes = {}, {}
        for case, latent_dim in (("fixed", 0), ("adaptive", ADAPTIVE_LATENT_DIM)):
            model, guide, x = _continuous_pair(name, device, latent_dim)
            sizes[case] = parameter_count(model, guide)
            pyro.clear_param_store()
            svi = SVI(model, guide, joint_optim.Adam({"lr": 1e-4}), ContinuousELBO())
            steps[case] = lambda svi=svi, x=x: svi.step(x)
        n_rounds, calls = rounds[name]
        t = interleaved(steps, rounds=n_rounds, calls=calls, warmup=2, device=device)
        result[f"adaptive_step_ratio{key}"] = t.ratio("adaptive", "fixed")
        # the arithmetic the adaptive q adds, for reading the time ratio against
        result[f"adaptive_parameter_ratio{key}"] = sizes["adaptive"] / sizes["fixed"]
        what = "digits U-Net, B=128" if name == "digits" else "2-D MLP, B=256"
        rows.append(
            (
                f"adaptive q step over fixed q (T = ∞), {what}",
                f"{1e3 * t.median('fixed'):.1f} ms",
                f"{1e3 * t.median('adaptive'):.1f} ms",
                f"{result[f'adaptive_step_ratio{key}']:.3f}",
            )
        )


def bench_elbo_eval(s: Setup, rounds: int) -> dict[str, float]:
    """elbo_terms (all T terms) against the plain vectorised bound and against Trace_ELBO on
    the literal chain, all without gradients, on the same data."""
    tab = s.tables()
    gen_a = torch.Generator(s.x.device).manual_seed(1)
    gen_b = torch.Generator(s.x.device).manual_seed(1)
    ours = elbo_terms(s.model, s.guide, s.x, generator=gen_a)
    plain = full_bound(s.model.denoiser, s.x, tab, s.num_levels, generator=gen_b)
    # the two compute the same numbers from the same noise (up to float32 rounding: the plain
    # reverse mean is DDPM's Algorithm 2 form): check before timing them
    agree = (ours.elbo - plain.sum(1)).abs().max().item() / plain.sum(1).abs().max().item()
    if not agree < 1e-4:
        raise SystemExit(f"elbo_terms and the plain bound disagree (relative {agree:.2e})")
    trace = Trace_ELBO()

    def literal() -> float:
        with torch.no_grad():
            return trace.loss(s.model, s.guide, s.x)

    t = interleaved(
        {
            "plain": lambda: full_bound(s.model.denoiser, s.x, tab, s.num_levels),
            "elbo_terms": lambda: elbo_terms(s.model, s.guide, s.x),
            "literal": literal,
        },
        rounds=rounds,
        calls=1,
        warmup=1,
        device=s.x.device,
    )
    speedup = 1.0 / t.ratio("elbo_terms", "literal")
    return {
        "plain_s": t.median("plain"),
        "elbo_terms_s": t.median("elbo_terms"),
        "literal_s": t.median("literal"),
        "ratio": t.ratio("elbo_terms", "plain"),
        "speedup_vs_literal": speedup,
        "relative_difference": agree,
    }


def bench_literal_chain(s: Setup, rounds: int, calls: int) -> dict[str, float]:
    """SVI with Trace_ELBO on the literal chain against the same chain written in PyTorch."""
    pyro.clear_param_store()
    tab = s.tables()
    plain_net = copy.deepcopy(s.model.denoiser)
    plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-4)
    svi = SVI(s.model, s.guide, joint_optim.Adam({"lr": 1e-4}), Trace_ELBO())
    t = interleaved(
        {
            "plain": lambda: literal_chain_step(plain_net, plain_opt, s.x, tab, s.num_levels),
            "svi": lambda: svi.step(s.x),
        },
        rounds=rounds,
        calls=calls,
        warmup=1,
        device=s.x.device,
    )
    return {
        "plain_s": t.median("plain"),
        "svi_s": t.median("svi"),
        "ratio": t.ratio("svi", "plain"),
    }


def bench_sampling(s: Setup, num_samples: int, rounds: int) -> dict[str, float]:
    tab = s.tables()
    shape = (num_samples, *s.model.event_shape)
    t = interleaved(
        {
            "plain": lambda: ancestral_loop(s.model.denoiser, tab, shape, s.num_levels),
            "ancestral_sample": lambda: ancestral_sample(s.model, num_samples),
        },
        rounds=rounds,
        calls=1,
        warmup=1,
        device=s.x.device,
    )
    return {
        "plain_s": t.median("plain"),
        "pyrodiff_s": t.median("ancestral_sample"),
        "ratio": t.ratio("ancestral_sample", "plain"),
    }


def bench_iwae(
    dev: torch.device, quick: bool, rows: list[tuple[str, str, str, str]], result: dict
) -> None:
    """IWAE-16 on 2-D data at T = 1000 (iwae_bound, vectorised over t and K) against the plain
    vectorised log-weights; adds its row and ``iwae_ratio``."""
    import math

    s = two_d_setup(dev, batch=8 if quick else 32)
    tab = s.tables()
    K = 16

    def plain() -> torch.Tensor:
        lw = iwae_log_weights(s.model.denoiser, s.x, tab, s.num_levels, K)
        return torch.logsumexp(lw, 0) - math.log(K)

    t = interleaved(
        {"plain": plain, "iwae_bound": lambda: iwae_bound(s.model, s.guide, s.x, K)},
        rounds=3 if quick else 7,
        calls=1,
        warmup=1,
        device=s.x.device,
    )
    result["iwae_ratio"] = t.ratio("iwae_bound", "plain")
    rows.append(
        (
            f"IWAE-{K}, 2-D, N={s.x.shape[0]}, T=1000: iwae_bound",
            f"{t.median('plain'):.3f} s",
            f"{t.median('iwae_bound'):.3f} s",
            f"{result['iwae_ratio']:.3f}",
        )
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux: clear_refs 5); return the
    baseline in KiB. Elsewhere fall back to the lifetime peak, which can only under-report."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_child(which: str, num_steps: int, batch: int, device: str) -> None:
    """In a fresh process: the rise of peak memory during one full-bound evaluation, in MB."""
    torch.set_num_threads(1)
    dev = resolve_device(device)
    s = two_d_setup(dev, num_steps=num_steps, batch=batch)
    tab = s.tables()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.max_memory_allocated(dev)
    else:
        before = _reset_peak_rss()
    if which == "pyrodiff":
        elbo_terms(s.model, s.guide, s.x)
    else:
        full_bound(s.model.denoiser, s.x, tab, s.num_levels)
    if dev.type == "cuda":
        mb = (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    else:
        mb = (_peak_rss() - before) / 1024
    print(json.dumps({"peak_mb": mb}))


def peak_memory(which: str, num_steps: int, batch: int, device: str) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--peak",
        which,
        str(num_steps),
        str(batch),
        "--device",
        device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: under 2 minutes")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--peak", nargs=3, metavar=("WHICH", "T", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        choices=("adaptive",),
        help="run one stage alone: adaptive (adaptive_step_ratio and adaptive_step_ratio_2d)",
    )
    args = parser.parse_args(argv)
    if args.peak:
        which, steps, batch = args.peak
        peak_memory_child(which, int(steps), int(batch), args.device)
        return {}
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    effort = QUICK if args.quick else FULL
    rows: list[tuple[str, str, str, str]] = []
    result: dict[str, object] = {}

    clock = time.perf_counter()

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - clock:6.1f} s] {name}", file=sys.stderr, flush=True)

    adaptive_rounds = {
        "digits": (effort.train_rounds_digits, effort.train_calls_digits),
        "2d": (effort.train_rounds_2d, effort.train_calls_2d),
    }
    if args.only == "adaptive":
        stage("adaptive q train step")
        bench_adaptive_step(dev, adaptive_rounds, rows, result)
        return _report(rows, result, dev, args)
    digits = digits_setup(dev)
    two_d = two_d_setup(dev)

    stage("train step, digits")
    tr = bench_train_step(digits, effort.train_rounds_digits, effort.train_calls_digits)
    stage("train step, 2-D")
    tr2 = bench_train_step(two_d, effort.train_rounds_2d, effort.train_calls_2d)
    stage("train step, 64-wide MLP")
    tr64 = bench_train_step(mlp64_setup(dev), effort.train_rounds_2d, effort.train_calls_2d)
    for key, r in (("", tr), ("_2d", tr2), ("_mlp64", tr64)):
        result[f"train_step_ratio{key}"] = r["svi_ratio"]
        result[f"train_step_ratio_module{key}"] = r["module_ratio"]
        result[f"train_step_ratio_pyro_optim{key}"] = r["svi_pyro_optim_ratio"]
    rows += [
        (
            "train step, digits (UNet, B=128, T=1000), SVI",
            f"{tr['plain_ms']:.1f} ms",
            f"{tr['svi_ms']:.1f} ms",
            f"{tr['svi_ratio']:.3f}",
        ),
        (
            "train step, digits, SVI with pyro.optim.Adam",
            f"{tr['plain_ms']:.1f} ms",
            f"{tr['svi_pyro_optim_ms']:.1f} ms",
            f"{tr['svi_pyro_optim_ratio']:.3f}",
        ),
        (
            "train step, digits, ELBO module + torch.optim",
            f"{tr['plain_ms']:.1f} ms",
            f"{tr['module_ms']:.1f} ms",
            f"{tr['module_ratio']:.3f}",
        ),
        (
            "train step, 2-D (MLP, B=256, T=1000), SVI",
            f"{tr2['plain_ms']:.2f} ms",
            f"{tr2['svi_ms']:.2f} ms",
            f"{tr2['svi_ratio']:.3f}",
        ),
        (
            "train step, 2-D, SVI with pyro.optim.Adam",
            f"{tr2['plain_ms']:.2f} ms",
            f"{tr2['svi_pyro_optim_ms']:.2f} ms",
            f"{tr2['svi_pyro_optim_ratio']:.3f}",
        ),
        (
            "train step, 2-D, ELBO module + torch.optim",
            f"{tr2['plain_ms']:.2f} ms",
            f"{tr2['module_ms']:.2f} ms",
            f"{tr2['module_ratio']:.3f}",
        ),
        (
            "train step, 64-wide (MLP H=512, B=128, T=1000), SVI",
            f"{tr64['plain_ms']:.2f} ms",
            f"{tr64['svi_ms']:.2f} ms",
            f"{tr64['svi_ratio']:.3f}",
        ),
        (
            "train step, 64-wide, ELBO module + torch.optim",
            f"{tr64['plain_ms']:.2f} ms",
            f"{tr64['module_ms']:.2f} ms",
            f"{tr64['module_ratio']:.3f}",
        ),
    ]

    # Per-datum work is the same on both sides (T network rows per datum); what differs is
    # Pyro's per-site work and the batch each network call sees, so the speed-up depends on N.
    for n in (16, 64):
        stage(f"full bound, N={n}")
        ev = bench_elbo_eval(two_d_setup(dev, batch=n), effort.eval_rounds)
        result[f"elbo_eval_ratio_n{n}"] = ev["ratio"]
        result[f"elbo_eval_speedup_vs_literal_n{n}"] = ev["speedup_vs_literal"]
        result[f"elbo_eval_relative_difference_n{n}"] = ev["relative_difference"]
        rows += [
            (
                f"full bound, 2-D, N={n}, T=1000: elbo_terms",
                f"{ev['plain_s']:.3f} s",
                f"{ev['elbo_terms_s']:.3f} s",
                f"{ev['ratio']:.3f}",
            ),
            (
                f"  Trace_ELBO on the literal chain, N={n} (speed-up)",
                f"{ev['literal_s']:.3f} s",
                f"{ev['elbo_terms_s']:.3f} s",
                f"x{ev['speedup_vs_literal']:.1f}",
            ),
        ]
    result["elbo_eval_ratio"] = result["elbo_eval_ratio_n64"]
    result["elbo_eval_speedup_vs_literal"] = result["elbo_eval_speedup_vs_literal_n16"]

    stage("IWAE-16")
    bench_iwae(dev, args.quick, rows, result)

    stage("continuous-time train step")
    bench_continuous_step(dev, effort.train_rounds_digits, effort.train_calls_digits, rows, result)

    stage("adaptive q train step")
    bench_adaptive_step(dev, adaptive_rounds, rows, result)

    stage("literal chain")
    lit = bench_literal_chain(
        two_d_setup(dev, num_steps=100), effort.eval_rounds, effort.literal_calls
    )
    result["literal_chain_ratio"] = lit["ratio"]
    rows.append(
        (
            "literal chain step, 2-D, B=256, T=100, Trace_ELBO",
            f"{lit['plain_s'] * 1e3:.0f} ms",
            f"{lit['svi_s'] * 1e3:.0f} ms",
            f"{lit['ratio']:.3f}",
        )
    )

    stage("sampling")
    sa = bench_sampling(two_d, 256, effort.sample_rounds)
    result["sampling_ratio"] = sa["ratio"]
    rows.append(
        (
            "ancestral sampling, 2-D, 256 samples, T=1000",
            f"{sa['plain_s']:.3f} s",
            f"{sa['pyrodiff_s']:.3f} s",
            f"{sa['ratio']:.3f}",
        )
    )

    stage("peak memory")
    for steps in (100, 1000):
        ours = peak_memory("pyrodiff", steps, 64, args.device)
        plain = peak_memory("plain", steps, 64, args.device)
        result[f"elbo_eval_peak_mb_T{steps}"] = ours
        rows.append(
            (
                f"peak memory, full bound, 2-D, N=64, T={steps}",
                f"{plain:.1f} MB",
                f"{ours:.1f} MB",
                "",
            )
        )
    result["elbo_eval_peak_mb"] = {
        "T100": result["elbo_eval_peak_mb_T100"],
        "T1000": result["elbo_eval_peak_mb_T1000"],
    }
    return _report(rows, result, dev, args)


def _report(rows: list, result: dict, dev: torch.device, args: argparse.Namespace) -> dict:
    """Print the table and, as the last line, the JSON object of every figure."""
    result["device"] = str(dev)
    result["machine"] = machine()
    result["threads"] = args.threads
    result["quick"] = bool(args.quick)

    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'plain PyTorch':>14}  {'pyrodiff':>12}  {'ratio':>8}")
    for name, base, ours_s, ratio in rows:
        print(f"{name:<{width}}  {base:>14}  {ours_s:>12}  {ratio:>8}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return result


if __name__ == "__main__":
    main()
