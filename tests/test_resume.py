"""Resume: a run stopped at any point and resumed ends bit-identical to one never stopped."""

import json

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrodiff import CheckpointError, Diffusion, ForwardGuide, linear_schedule
from pyrodiff.checkpoint import load_checkpoint
from pyrodiff.data import Dataset
from pyrodiff.infer import DiffusionELBO
from pyrodiff.infer.timesteps import ImportanceTimesteps
from pyrodiff.networks import MLPDenoiser
from pyrodiff.train import History, LRSchedule, fit

STEPS = 12


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g) * 0.5 + 1.0
    return Dataset("g", train=x[:64], test=x[64:])


def _pair(T=4, init_seed=0):
    torch.manual_seed(init_seed)
    s = linear_schedule(T)
    return Diffusion(MLPDenoiser(2, 16, 1, 8), s), ForwardGuide(s)


OPTIONS = {
    "plain": {},
    "ema-cosine-clip": {
        "ema_decay": 0.7,
        "lr_schedule": LRSchedule.WARMUP_COSINE,
        "warmup_steps": 3,
        "grad_clip": 0.5,
        "weight_decay": 0.01,
    },
    "trace-elbo-log3": {"loss": Trace_ELBO(), "log_every": 3},
}


def _fit(run, init_seed=0, **kw):
    model, guide = _pair(init_seed=init_seed)
    options = {"updates": STEPS, "batch_size": 16, "eval_every": 5, "checkpoint_every": 4}
    options.update(kw)
    h = fit(model, guide, _data(), run_dir=run, progress=False, seed=11, **options)
    return model, guide, h


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "name, stop",
    [("plain", _Stop), ("ema-cosine-clip", KeyboardInterrupt), ("trace-elbo-log3", _Stop)],
    ids=["plain-crash", "ema-cosine-clip-ctrl-c", "trace-elbo-log3-crash"],
)
def test_resume_is_bit_identical(tmp_path, name, stop):
    """Stopped after update 7 by Ctrl-C (checkpoint at 7) or by a crash (last checkpoint at 4,
    records up to 7 already written): resuming must give the uninterrupted parameters, EMA,
    optimizer state and metrics, exactly."""
    opts = OPTIONS[name]
    ref_model, ref_guide, ref_h = _fit(tmp_path / "ref", **opts)

    def stop_at_7(step, loss):
        if step == 7:
            raise stop

    run = tmp_path / "run"
    if stop is KeyboardInterrupt:
        h = _fit(run, callback=stop_at_7, **opts)[2]
        assert h.interrupted and h.final_step == 7
        assert load_checkpoint(run)["step"] == 7
    else:
        with pytest.raises(_Stop):
            _fit(run, callback=stop_at_7, **opts)
        assert load_checkpoint(run)["step"] == 4
        assert max(r["step"] for r in _metrics(run)) > 4  # records past the checkpoint

    # a model initialised differently: everything must come from the checkpoint
    model, guide, h = _fit(run, init_seed=99, resume=True, **opts)
    assert not h.interrupted and h.final_step == STEPS
    assert _same_params(model, ref_model) and _same_params(guide, ref_guide)
    assert _metrics(run) == _metrics(tmp_path / "ref")
    assert h.records == ref_h.records
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    assert a["step"] == b["step"] == STEPS
    for key in ("ema", "optimizer"):
        assert _nested_equal(a[key], b[key]), key


def _nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_nested_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_metrics_cut_mid_line_are_repaired_on_resume(tmp_path):
    ref_model, _, _ = _fit(tmp_path / "ref")
    run = tmp_path / "run"

    def crash(step, loss):
        if step == 6:
            raise _Stop

    with pytest.raises(_Stop):
        _fit(run, callback=crash)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "kind": "tra')  # what a kill during a write leaves
    model, _, _ = _fit(run, resume=True)
    steps = [r["step"] for r in _metrics(run) if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))
    assert _same_params(model, ref_model)
    assert History.load(run).records == History.load(tmp_path / "ref").records


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    run = tmp_path / "run"
    model, _, h = _fit(run)
    again, _, h2 = _fit(run, init_seed=5, resume=True)
    assert _same_params(model, again)
    assert h2.records == h.records


def test_resume_refuses_what_does_not_fit(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        _fit(run, resume=True)
    _fit(run, updates=4)
    with pytest.raises(CheckpointError, match="already holds a checkpoint: pass resume=True"):
        _fit(run)
    other_T, other_guide = _pair(T=5)
    with pytest.raises(CheckpointError, match="num_steps is 4 in the checkpoint but 5 now"):
        fit(other_T, other_guide, _data(), updates=8, batch_size=16, run_dir=run, resume=True,
            progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="no EMA, but ema_decay is set"):
        _fit(run, resume=True, ema_decay=0.9)
    model, guide = _pair()
    bigger = Dataset("g", train=torch.randn(70, 2), test=torch.randn(4, 2))
    with pytest.raises(CheckpointError, match="trained on 64 data, but 70 are given"):
        fit(model, guide, bigger, updates=8, batch_size=16, run_dir=run, resume=True,
            progress=False)  # fmt: skip
    # the refused attempts left the checkpoint as it was
    assert load_checkpoint(run)["step"] == 4


def test_an_adaptive_timestep_sampler_resumes_exactly(tmp_path):
    """ImportanceTimesteps learns from the terms it sees: its history goes into the checkpoint
    (and fit's parameter-creating first call must not feed it)."""

    def loss():
        return DiffusionELBO(timesteps=ImportanceTimesteps(history=2))

    fresh = loss()
    ref_model, _, _ = _fit(tmp_path / "ref", loss=fresh, checkpoint_every=5, eval_every=None)
    # 12 updates of 16 data: every t in 1…4 has its 2 values by now, from training alone
    assert fresh.timesteps.warm

    def stop_at_7(step, _):
        if step == 7:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    _fit(run, loss=loss(), callback=stop_at_7, checkpoint_every=5, eval_every=None)
    assert load_checkpoint(run)["extra"]["timesteps"]["counts"] is not None
    model, _, _ = _fit(run, loss=loss(), resume=True, checkpoint_every=5, eval_every=None)
    assert _same_params(model, ref_model)


def test_the_first_call_does_not_feed_the_sampler():
    sampler = ImportanceTimesteps(history=2)
    model, guide = _pair()
    fit(model, guide, _data(), loss=DiffusionELBO(timesteps=sampler), updates=1, batch_size=16,
        progress=False)  # fmt: skip
    # one update of 16 data: the counts total 16, not 32
    assert int(sampler.state_dict()["counts"].sum()) == 16
