"""Distributed training: two gloo processes on 127.0.0.1 take the same steps as one process on
the combined batch, because wrap_module sums gradients over ranks (the loss is a batch sum)."""

from __future__ import annotations

import faulthandler
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyrodiff import ConfigError, Diffusion, ForwardGuide, linear_schedule
from pyrodiff.distributed import (
    Backend,
    DistributedContext,
    cleanup_distributed,
    rank_seed,
    setup_distributed,
    shard_indices,
    wrap_module,
)
from pyrodiff.infer import prior_kl, step_terms
from pyrodiff.networks import MLPDenoiser

T = 8
N = 12  # the combined batch; each of the 2 ranks gets 6
STEPS = 3
LR = 0.05


class FixedDrawELBO(nn.Module):
    """DiffusionELBO's loss −Σ_n [T · term_{t_n} − KL_prior] with the draws (t, ε) given, so
    that a sharded run and a single run see exactly the same randomness."""

    def __init__(self, model: Diffusion, guide: ForwardGuide) -> None:
        super().__init__()
        self.model, self.guide = model, guide

    def forward(self, x0, t, noise):
        terms = step_terms(self.model, self.guide, x0, t, noise)
        return -(T * terms).sum() + prior_kl(self.model, self.guide, x0).sum()


def _problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(1, T + 1, (STEPS, N), generator=gen)
    noise = torch.randn(STEPS, N, 2, generator=gen, dtype=torch.float64)
    return x, t, noise


def _loss_module() -> FixedDrawELBO:
    torch.manual_seed(1)
    sched = linear_schedule(T)
    net = MLPDenoiser(2, hidden=16, depth=1, time_dim=8).double()
    return FixedDrawELBO(Diffusion(net, sched), ForwardGuide(sched))


def _train(module: nn.Module, x, t, noise, idx) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=LR)
    for s in range(STEPS):
        opt.zero_grad()
        module(x[idx], t[s][idx], noise[s][idx]).backward()
        opt.step()


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # a rank killed by a signal then prints where it was, not only the signal's name
    faulthandler.enable()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    ctx = setup_distributed(Backend.GLOO)
    finished = False
    try:
        x, t, noise = _problem()
        idx = shard_indices(N, ctx.rank, ctx.world_size)
        summed = _loss_module()
        _train(wrap_module(summed, ctx), x, t, noise, idx)
        # DistributedDataParallel's own default (a mean over ranks), for contrast
        averaged = _loss_module()
        _train(DistributedDataParallel(averaged), x, t, noise, idx)
        torch.save(
            {"summed": summed.state_dict(), "averaged": averaged.state_dict()},
            Path(out) / f"rank{rank}.pt",
        )
        _fit_worker(ctx, Path(out))
        assert ctx.broadcast_object(f"from rank {ctx.rank}") == "from rank 0"
        finished = True
    finally:
        cleanup_distributed(synchronize=finished)


def _fit_worker(ctx: DistributedContext, out: Path) -> None:
    from pyrodiff.train import fit

    torch.manual_seed(2)
    sched = linear_schedule(T)
    model = Diffusion(MLPDenoiser(2, hidden=16, depth=1, time_dim=8), sched)
    x, _, _ = _problem()
    fit(
        model,
        ForwardGuide(sched),
        x,
        updates=2,
        batch_size=4,
        device="cpu",
        run_dir=out / f"run{ctx.rank}",
        progress=False,
        distributed=ctx,
    )
    torch.save(model.state_dict(), out / f"fit{ctx.rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("model.denoiser")}


def test_two_processes_match_one_process_on_the_combined_batch(two_ranks):
    single = _loss_module()
    x, t, noise = _problem()
    start = {k: v.clone() for k, v in _params(single.state_dict()).items()}
    _train(single, x, t, noise, torch.arange(N))
    expected = _params(single.state_dict())
    for rank in (0, 1):
        got = _params(torch.load(two_ranks / f"rank{rank}.pt")["summed"])
        for name, value in expected.items():
            # float64; only the order of additions differs between the two computations
            torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12)
    # the check has teeth: the parameters moved, and DDP's default mean does not match
    assert any((expected[k] - start[k]).abs().max() > 1e-3 for k in expected)
    averaged = _params(torch.load(two_ranks / "rank0.pt")["averaged"])
    assert max((averaged[k] - expected[k]).abs().max().item() for k in expected) > 1e-4


def test_fit_keeps_ranks_in_step_and_only_rank_zero_writes(two_ranks):
    a = torch.load(two_ranks / "fit0.pt")
    b = torch.load(two_ranks / "fit1.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert (two_ranks / "run0").is_dir() and any((two_ranks / "run0").iterdir())
    assert not (two_ranks / "run1").exists()


def test_shards_are_disjoint_and_cover_the_data():
    for n, w in [(12, 2), (13, 3), (5, 5)]:
        shards = [shard_indices(n, r, w) for r in range(w)]
        assert sorted(torch.cat(shards).tolist()) == list(range(n))
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def test_rank_seeds_differ_and_are_reproducible():
    seeds = [rank_seed(7, r) for r in range(4)]
    assert len(set(seeds)) == 4 and seeds[0] == 7 and rank_seed(7, 3) == seeds[3]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: shard_indices(3, 0, 4), "cannot give each of 4 ranks"),
        (lambda: shard_indices(8, 2, 2), "0 <= rank < world_size"),
        (lambda: setup_distributed("gloo"), "Backend"),
    ],
)
def test_bad_arguments_raise_config_errors(call, match, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "0" if var != "MASTER_ADDR" else "127.0.0.1")
    with pytest.raises(ConfigError, match=match):
        call()


def test_setup_outside_torchrun_says_how_to_launch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        setup_distributed()


def test_single_process_context_broadcast_is_identity():
    ctx = DistributedContext(0, 1, torch.device("cpu"), True)
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("fails", [False, True])
def test_cli_meets_at_the_barrier_only_when_the_run_finished(fails, monkeypatch, tmp_path):
    import pyrodiff.cli.commands as commands
    import pyrodiff.distributed as distributed
    from pyrodiff.cli import main

    left = []
    ctx = DistributedContext(0, 1, torch.device("cpu"), True)
    monkeypatch.setattr(distributed, "setup_distributed", lambda: ctx)
    monkeypatch.setattr(distributed, "cleanup_distributed", lambda **kw: left.append(kw))

    def train(args, config, given):
        assert given is ctx
        if fails:
            raise RuntimeError("a rank failed")
        return 0

    monkeypatch.setattr(commands, "_train", train)
    code = main(["train", "--distributed", "--data", "moons", "--out", str(tmp_path / "run")])
    assert (code != 0) == fails
    assert left == [{"synchronize": not fails}]
