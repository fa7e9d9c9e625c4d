"""Devices: cached schedule tables follow every change of the schedule (CPU tests, always run),
and the training step, the bound, the sampler and a fit run on CUDA where it exists (those
tests skip without a GPU)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyrodiff import Diffusion, ForwardGuide, cosine_schedule, linear_schedule
from pyrodiff.gaussian import q_marginal, q_posterior, schedule_table
from pyrodiff.infer import DiffusionELBO, elbo_terms, step_terms
from pyrodiff.networks import MLPDenoiser
from pyrodiff.sampling import ancestral_sample

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

T = 12


def _pair(schedule=None, dtype=torch.float64):
    torch.manual_seed(0)
    sched = schedule if schedule is not None else linear_schedule(T)
    net = MLPDenoiser(2, hidden=16, depth=1, time_dim=8).to(dtype)
    return Diffusion(net, sched), ForwardGuide(sched)


def _marginal_by_hand(schedule, x0, t):
    ab = schedule.alpha_bar[t].to(x0)[:, None]
    return ab.sqrt() * x0, (1 - schedule.alpha_bar[t]).to(x0)[:, None].sqrt()


# --- CPU: the table caches never serve a stale table -------------------------------------------


def test_loading_another_schedule_in_place_rebuilds_the_tables():
    model, guide = _pair()
    x0 = torch.randn(5, 2)
    t = torch.tensor([1, 3, 5, 8, 12])
    q_marginal(guide.schedule, x0, t)  # fills the caches for the linear schedule
    model.reverse_moments(x0, t)
    other = cosine_schedule(T)
    model.load_state_dict(
        {**model.state_dict(), **{f"schedule.{k}": v for k, v in other.state_dict().items()}}
    )
    loc, scale = _marginal_by_hand(other, x0, t)
    q = q_marginal(guide.schedule, x0, t)
    torch.testing.assert_close(q.loc, loc)
    torch.testing.assert_close(q.scale, scale.expand_as(x0))
    _, var = model.reverse_moments(x0, t)
    torch.testing.assert_close(var[:, 0], other.betas[t])


def _twice_alpha_bar(s):
    return s.alpha_bar * 2


def test_replaced_or_edited_buffers_rebuild_the_tables():
    sched = linear_schedule(T)
    first = schedule_table(sched, _twice_alpha_bar)
    assert schedule_table(sched, _twice_alpha_bar) is first  # served from the cache
    # .to(device) replaces a buffer by a new tensor; emulate that on the CPU
    sched.alpha_bar = sched.alpha_bar.clone() * 0.5
    second = schedule_table(sched, _twice_alpha_bar)
    torch.testing.assert_close(second, sched.alpha_bar * 2)
    torch.testing.assert_close(second, first * 0.5)
    # an in-place edit bumps the version counter
    with torch.no_grad():
        sched.alpha_bar.mul_(0.5)
    torch.testing.assert_close(schedule_table(sched, _twice_alpha_bar), first * 0.25)


def test_tables_are_cast_per_dtype_and_stay_exact_in_float64():
    sched = linear_schedule(T)
    t = torch.arange(1, T + 1)
    x64 = torch.randn(T, 2)
    x32 = x64.float()
    q32 = q_marginal(sched, x32, t)
    q64 = q_marginal(sched, x64, t)
    assert q32.loc.dtype == torch.float32 and q64.loc.dtype == torch.float64
    loc, scale = _marginal_by_hand(sched, x64, t)
    torch.testing.assert_close(q64.loc, loc, rtol=1e-15, atol=0)
    torch.testing.assert_close(q32.loc, loc.float())
    # the posterior's tables, built after the float32 ones, are float64 again for float64 data
    post = q_posterior(sched, x64, x64, t.clamp(min=2))
    assert post.loc.dtype == torch.float64


def test_learned_tables_are_never_cached():
    sched = linear_schedule(T)
    sched.register_parameter("scale", torch.nn.Parameter(torch.tensor(1.0)))
    a = schedule_table(sched, lambda s: s.alpha_bar * s.scale)
    assert a.requires_grad
    a.sum().backward()
    assert sched.scale.grad is not None


# --- CUDA: the same computations on the GPU ----------------------------------------------------


def _cuda_pair():
    model, guide = _pair()
    return model.cuda(), guide.cuda()


@needs_cuda
def test_step_terms_on_cuda_equal_the_cpu_values():
    model, guide = _pair()
    x0 = torch.randn(16, 2)
    t = torch.randint(1, T + 1, (16,))
    noise = torch.randn(16, 2)
    cpu = step_terms(model, guide, x0, t, noise)
    model, guide = model.cuda(), guide.cuda()
    gpu = step_terms(model, guide, x0.cuda(), t.cuda(), noise.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


@needs_cuda
def test_svi_step_and_elbo_terms_run_on_cuda():
    pyro.clear_param_store()
    model, guide = _cuda_pair()
    x0 = torch.randn(32, 2, device="cuda")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), DiffusionELBO())
    before = [p.detach().clone() for p in model.parameters()]
    loss = svi.step(x0)
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert any((p - b).abs().max() > 0 for p, b in zip(model.parameters(), before, strict=True))
    terms = elbo_terms(model, guide, x0)
    assert terms.elbo.device.type == "cuda" and torch.isfinite(terms.elbo).all()


@needs_cuda
def test_ancestral_sampling_on_cuda_equals_the_cpu_chain():
    model, _ = _pair()
    noise = torch.randn(T + 1, 8, 2)
    cpu = ancestral_sample(model, 8, noise=noise)
    gpu = ancestral_sample(model.cuda(), 8, noise=noise.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


@needs_cuda
def test_fit_on_cuda_with_and_without_bf16(tmp_path):
    from pyrodiff.checkpoint import restore_weights
    from pyrodiff.train import Precision, fit

    for precision in (Precision.FP32, Precision.BF16):
        model, guide = _pair(dtype=torch.float32)
        x = torch.randn(64, 2)
        run = tmp_path / precision.value
        history = fit(
            model,
            guide,
            x,
            updates=3,
            batch_size=16,
            device="cuda",
            precision=precision,
            run_dir=run,
            progress=False,
        )
        assert not history.interrupted
        assert all(p.device.type == "cuda" for p in model.parameters())
        assert model.schedule.alpha_bar.device.type == "cuda"
        # the checkpoint written on the GPU restores into a CPU model with the same weights
        cpu_model, cpu_guide = _pair(dtype=torch.float32)
        restore_weights(cpu_model, cpu_guide, run, use_ema=False)
        for a, b in zip(cpu_model.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b.cpu())
