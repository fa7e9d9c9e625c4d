"""fit: it maximises the ELBO, evaluates it correctly, is reproducible and refuses bad input."""

import json
import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

from pyrodiff import (
    ConfigError,
    DataError,
    DeviceError,
    Diffusion,
    ForwardGuide,
    ModelMismatchError,
    NonFiniteError,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.checkpoint import load_checkpoint, restore_weights
from pyrodiff.data import Dataset, get_dataset
from pyrodiff.infer import DiffusionELBO, elbo_terms, exact_elbo_terms, exact_log_evidence
from pyrodiff.networks import LinearDenoiser, MLPDenoiser
from pyrodiff.train import (
    EMA,
    EVAL_SEED_OFFSET,
    EpochSampler,
    History,
    LRSchedule,
    Precision,
    evaluate_split,
    fit,
    learning_rate,
)

T = 4


def _gaussian_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 0.5 + 1.0


def _linear_pair(T=T):
    s = linear_schedule(T)
    model = Diffusion(LinearDenoiser(2, T), s, variance=ReverseVariance.PER_STEP, event_shape=(2,))
    return model, ForwardGuide(s)


def _mlp_pair(T=T, seed=0):
    torch.manual_seed(seed)
    s = linear_schedule(T)
    return Diffusion(MLPDenoiser(2, 16, 1, 8), s), ForwardGuide(s)


def _params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


# --- learning-rate schedules -------------------------------------------------------------


def test_learning_rate_schedules_follow_their_formulas():
    lr, S = 0.1, 100
    assert all(learning_rate(LRSchedule.CONSTANT, lr, s, S) == lr for s in range(S))
    cos = [learning_rate(LRSchedule.COSINE, lr, s, S) for s in range(S + 1)]
    assert cos[0] == lr and cos[S] == pytest.approx(0.0, abs=1e-15)
    assert cos[S // 2] == pytest.approx(lr / 2)
    # ½(1 + cos πx) is symmetric about its midpoint: lr(s) + lr(S − s) = lr
    assert all(cos[s] + cos[S - s] == pytest.approx(lr) for s in range(S + 1))
    W = 10
    warm = [learning_rate(LRSchedule.WARMUP_COSINE, lr, s, S, W) for s in range(S)]
    assert warm[:W] == pytest.approx([lr * (s + 1) / W for s in range(W)])
    assert warm[W] == lr
    assert warm[W + (S - W) // 2] == pytest.approx(lr / 2)
    with pytest.raises(ConfigError, match="LRSchedule"):
        learning_rate("cosine", lr, 0, S)


def test_fit_applies_the_schedule_it_records():
    x = _gaussian_data(64)
    model, guide = _mlp_pair()
    h = fit(
        model,
        guide,
        x,
        updates=12,
        batch_size=16,
        lr=0.01,
        lr_schedule=LRSchedule.WARMUP_COSINE,
        warmup_steps=4,
        progress=False,
    )
    got = [r["lr"] for r in h.train]
    assert got == [learning_rate(LRSchedule.WARMUP_COSINE, 0.01, s, 12, 4) for s in range(12)]


# --- training works ------------------------------------------------------------------------


def test_fit_closes_most_of_the_gap_to_the_exact_evidence():
    """A linear model with per-step variances contains the true reverse process of Gaussian
    data, so the exact ELBO can reach log p(x); training must close most of the gap."""
    x = _gaussian_data(512)
    oracle = gaussian_oracle(linear_schedule(T), torch.tensor([1.0, 1.0]), 0.5)
    log_p = exact_log_evidence(oracle, x).mean().item()
    model, guide = _linear_pair()
    before = exact_elbo_terms(model, guide, x).elbo.mean().item()
    h = fit(model, guide, x, updates=80, batch_size=128, lr=3e-2, progress=False)
    after = exact_elbo_terms(model, guide, x).elbo.mean().item()
    assert after <= exact_log_evidence(model, x).mean().item() + 1e-9
    assert log_p - after < 0.05 * (log_p - before)
    assert [r["step"] for r in h.train] == list(range(1, 81))


@pytest.mark.parametrize("loss", [Trace_ELBO(), TraceMeanField_ELBO()], ids=["trace", "tmf"])
def test_fit_takes_any_pyro_elbo(loss):
    x = _gaussian_data(64)
    model, guide = _mlp_pair()
    start = _params(model)
    h = fit(model, guide, x, loss=loss, updates=3, batch_size=8, progress=False)
    assert [r["step"] for r in h.train] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in h.train)
    assert any(not torch.equal(a, b) for a, b in zip(start, _params(model), strict=True))


def test_lazily_created_guide_parameters_are_trained():
    """An autoguide creates its parameters on the first call; fit must optimise them."""
    x = _gaussian_data(16)
    model, _ = _mlp_pair(T=2)
    guide = AutoNormal(model)
    assert not list(guide.parameters())
    fit(model, guide, x, loss=Trace_ELBO(), updates=3, batch_size=16, progress=False)
    names = [n for n, _ in guide.named_parameters()]
    assert names, "the autoguide's parameters were never created"
    locs = dict(guide.named_parameters())
    # AutoNormal initialises its scales at 0.1; three Adam steps must have moved them
    scale = [p for n, p in locs.items() if "scale" in n][0]
    assert not torch.allclose(scale, torch.full_like(scale, math.log(0.1)))


def test_same_seed_same_run_other_seed_other_run():
    x = _gaussian_data(64)
    runs = []
    for seed in (3, 3, 4):
        model, guide = _mlp_pair(seed=0)
        fit(model, guide, x, updates=5, batch_size=16, seed=seed, progress=False)
        runs.append(_params(model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_log_every_records_the_mean_of_its_updates():
    x = _gaussian_data(64)
    every = fit(*_mlp_pair(), x, updates=6, batch_size=16, seed=1, progress=False)
    grouped = fit(*_mlp_pair(), x, updates=6, batch_size=16, seed=1, log_every=4, progress=False)
    losses = [r["loss"] for r in every.train]
    assert [r["step"] for r in grouped.train] == [4, 6]
    assert grouped.train[0]["loss"] == pytest.approx(sum(losses[:4]) / 4, rel=1e-12)
    assert grouped.train[1]["loss"] == pytest.approx(sum(losses[4:]) / 2, rel=1e-12)


def test_bf16_autocast_changes_the_arithmetic_but_not_the_answer():
    torch.set_default_dtype(torch.float32)
    x = _gaussian_data(64).float()
    first = {}
    for precision in Precision:
        model, guide = _mlp_pair(seed=0)
        model.float()
        h = fit(model, guide, x, updates=2, batch_size=32, precision=precision, progress=False)
        first[precision] = h.train[0]["loss"]
    fp32, bf16 = first[Precision.FP32], first[Precision.BF16]
    assert fp32 != bf16  # autocast really ran the matmuls in bfloat16
    # bfloat16 keeps 8 significant bits: errors of a few 2⁻⁸ per product, not more
    assert abs(bf16 - fp32) < 0.05 * abs(fp32)


# --- evaluation ----------------------------------------------------------------------------


class _OpaqueGuide(PyroModule):
    """The forward chain without its closed forms: evaluation must fall back to traces."""

    def __init__(self, guide):
        super().__init__()
        self.guide = guide

    def forward(self, x0=None, num_samples=None):
        return self.guide(x0)


@pytest.mark.parametrize("budget", [4096, 7], ids=["one-chunk", "chunks-of-7"])
def test_trace_evaluation_of_the_oracle_is_exact(budget):
    """With the exact reverse process every Trace_ELBO draw equals log p(x_0) exactly, and the
    per-site split must add up to it, however the data are chunked."""
    s = linear_schedule(T)
    x = _gaussian_data(64)
    oracle = gaussian_oracle(s, torch.tensor([1.0, 1.0]), 0.5)
    guide = _OpaqueGuide(ForwardGuide(s))
    out = evaluate_split(oracle, guide, x, num_levels=None, batch_budget=budget, seed=1)
    assert out["estimator"] == "trace_elbo"
    assert out["elbo"] == pytest.approx(exact_log_evidence(oracle, x).mean().item(), abs=1e-9)
    assert len(out["per_step_loss"]) == T
    assert -sum(out["per_step_loss"]) - out["prior"] == pytest.approx(out["elbo"], abs=1e-9)
    assert out["reconstruction"] == -out["per_step_loss"][0]
    assert out["bits_per_dim"] is None


def test_trace_evaluation_per_step_terms_are_unbiased():
    """Each site's log q − log p is an unbiased estimate of DDPM's L_{t−1} (top-down guide)."""
    s = linear_schedule(T)
    x = _gaussian_data(32)
    model, guide = _linear_pair()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    exact = exact_elbo_terms(model, guide, x)
    truth = torch.cat([exact.per_step_loss.mean(0), exact.prior.mean(0, keepdim=True)])
    draws = []
    for seed in range(30):
        out = evaluate_split(model, _OpaqueGuide(ForwardGuide(s)), x, num_levels=None, seed=seed)
        draws.append(out["per_step_loss"] + [out["prior"]])
    draws = torch.tensor(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - truth).abs() < 4 * se + 1e-9).all(), (mean, truth, se)


def test_closed_form_evaluation_is_elbo_terms_with_its_own_noise():
    torch.manual_seed(0)
    s = linear_schedule(T)
    levels = 5
    x = torch.randint(0, levels, (40, 2)).double() * 2 / (levels - 1) - 1
    ds = Dataset("toy", train=x, test=x, num_levels=levels)
    model = Diffusion(MLPDenoiser(2, 8, 1, 4), s, likelihood=ds.likelihood())
    guide = ForwardGuide(s)
    rng_before = torch.get_rng_state()
    out = evaluate_split(model, guide, x, num_levels=levels, batch_budget=16, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before), "evaluation consumed training noise"
    gen = torch.Generator().manual_seed(5)
    ref = elbo_terms(model, guide, x, batch_budget=16, generator=gen).mean()
    assert out["elbo"] == ref["elbo"] and out["per_step_loss"] == ref["per_step_loss"]
    assert out["bits_per_dim"] == pytest.approx(-ref["elbo"] / (2 * math.log(2)))


def test_fit_shows_a_bar_for_each_evaluation_when_asked(capsys):
    x = _gaussian_data(64)
    ds = Dataset("g", train=x[:40], validation=x[40:52], test=x[52:])
    fit(*_mlp_pair(), ds, updates=2, batch_size=16, eval_every=1, progress=True)
    assert capsys.readouterr().err.count("ELBO terms") >= 3  # validation at 1 and 2, test at 2
    fit(*_mlp_pair(), ds, updates=2, batch_size=16, eval_every=1, progress=False)
    assert "ELBO terms" not in capsys.readouterr().err


def test_fit_evaluates_validation_on_schedule_and_test_once_at_the_end_with_the_ema(tmp_path):
    x = _gaussian_data(64)
    ds = Dataset("g", train=x[:40], validation=x[40:52], test=x[52:])
    model, guide = _mlp_pair()
    run = tmp_path / "run"
    h = fit(model, guide, ds, updates=7, batch_size=16, eval_every=3, ema_decay=0.5, seed=2,
            run_dir=run, progress=False)  # fmt: skip
    assert [(r["step"], r["split"]) for r in h.evals] == [
        (3, "validation"), (6, "validation"), (7, "validation"), (7, "test")
    ]  # fmt: skip
    assert all(r["ema"] and r["bits_per_dim"] is None for r in h.evals)
    assert h.final_eval == h.evals[-1] == h.final_eval_on("test")
    assert h.final_eval_on("validation") == h.evals[-2]
    # each record is the evaluation of its own split, with the averaged parameters; fit left
    # the raw ones in place
    seed = 2 + EVAL_SEED_OFFSET
    avg_model, avg_guide = _mlp_pair(seed=9)
    restore_weights(avg_model, avg_guide, run)
    for split, data in (("validation", x[40:52]), ("test", x[52:])):
        raw = evaluate_split(model, guide, data, num_levels=None, seed=seed)
        avg = evaluate_split(avg_model, avg_guide, data, num_levels=None, seed=seed)
        assert avg["elbo"] == h.final_eval_on(split)["elbo"] != raw["elbo"]


def test_fit_with_a_run_config_writes_the_run_folder_the_cli_reads(tmp_path, capsys):
    from pyrodiff.cli import main
    from pyrodiff.config import RunConfig, build

    config = RunConfig(data="eight_gaussians", num_steps=3, width=8, depth=1, updates=4,
                       batch_size=16, variance="beta")  # fmt: skip
    built = build(config, dataset=get_dataset("eight_gaussians", num_train=64, num_test=16,
                                               num_validation=16))  # fmt: skip
    run = tmp_path / "run"
    fit(built.model, built.guide, built.dataset, loss=built.loss, **config.fit_options(),
        **config.checkpoint_options(run), config=config, progress=False)  # fmt: skip
    assert RunConfig.from_json(run) == config
    for argv in (["plot", str(run)], ["compare", str(run), "--out", str(tmp_path / "c.png")],
                 ["evaluate", str(run), "--num", "8"]):  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err


def test_a_run_folder_without_config_is_plotted_and_its_evaluation_says_what_is_missing(
    tmp_path, capsys
):
    from pyrodiff.cli import main

    run = tmp_path / "run"
    fit(*_mlp_pair(), _gaussian_data(32), updates=2, batch_size=8, run_dir=run, progress=False)
    assert main(["plot", str(run)]) == 0
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert "no config.json" in err and "config=RunConfig" in err


def test_fit_steps_is_a_deprecated_alias_of_updates():
    x = _gaussian_data(32)
    with pytest.warns(DeprecationWarning, match="updates="):
        h = fit(*_mlp_pair(), x, steps=3, batch_size=8, progress=False)
    assert h.final_step == 3


# --- EMA -----------------------------------------------------------------------------------


def test_ema_is_the_exponential_average_and_swaps_back_exactly():
    lin = torch.nn.Linear(2, 1)
    d = 0.8
    ema = EMA(lin, d)
    thetas = [lin.weight.detach().clone()]
    for k in range(1, 6):
        with torch.no_grad():
            lin.weight.copy_(torch.full_like(lin.weight, float(k)))
        thetas.append(lin.weight.detach().clone())
        ema.update()
    n = len(thetas) - 1
    # the warm-up decay d_k = min(d, (1 + k)/(10 + k)) telescopes: the weight of θ_k is
    # (1 − d_k) Π_{j>k} d_j, and that of the initial θ_0 is Π_j d_j = (2·3·…·(n+1)) / (11·…·(n+10))
    dk = [min(d, (1 + k) / (10 + k)) for k in range(n + 1)]
    weights = [math.prod(dk[1:])] + [(1 - dk[k]) * math.prod(dk[k + 1 :]) for k in range(1, n + 1)]
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-12)
    assert math.isclose(weights[0], math.prod(range(2, n + 2)) / math.prod(range(11, n + 11)))
    expected = sum(w * th for w, th in zip(weights, thetas, strict=True))
    assert torch.allclose(ema.shadow["weight"], expected, rtol=1e-12)
    raw = lin.weight.detach().clone()
    with ema.applied():
        assert torch.equal(lin.weight, ema.shadow["weight"])
    assert torch.equal(lin.weight, raw)
    with pytest.raises(ConfigError, match="ema_decay"):
        EMA(lin, 1.0)


# --- guards and validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "validation, loss, what",
    [(True, Trace_ELBO(), "distribution parameter"), (False, DiffusionELBO(), "loss")],
    ids=["validated-trace", "unvalidated-diffusion"],
)
def test_non_finite_loss_stops_with_the_step_and_a_hint(tmp_path, validation, loss, what):
    """NaN parameters reach Pyro's sites as a refused distribution argument under validation,
    and the loss as a NaN without it; both stop training the same way."""
    pyro.enable_validation(validation)
    x = _gaussian_data(64)
    model, guide = _mlp_pair()

    def poison(step, loss):
        if step == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=rf"non-finite {what}.* at step 4.*learning rate"):
        fit(model, guide, x, loss=loss, updates=10, batch_size=16, run_dir=run,
            checkpoint_every=2, callback=poison, progress=False)  # fmt: skip
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 2
    # the kept parameters are the good ones (buffers such as log SNR_0 = +inf are skipped)
    params = dict(model.named_parameters())
    assert all(torch.isfinite(state["model"][n]).all() for n in params)
    assert not torch.isfinite(next(model.parameters())).all()


class _NaNGradELBO(DiffusionELBO):
    """A finite loss whose gradient is NaN: d/dθ √(0·θ) = 0 · ∞."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        return loss + torch.sqrt(0.0 * next(model.parameters()).sum().abs())


def test_non_finite_gradient_stops_before_the_update():
    x = _gaussian_data(32)
    model, guide = _mlp_pair()
    start = _params(model)
    with pytest.raises(NonFiniteError, match=r"gradient norm \(nan\) at step 1.*data range"):
        fit(model, guide, x, loss=_NaNGradELBO(), updates=3, batch_size=8, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(start, _params(model), strict=True))


BAD_OPTIONS = [
    ({"updates": 0}, ConfigError, "updates must be an integer >= 1, got 0"),
    ({"updates": 2.5}, ConfigError, "updates must be an integer >= 1, got 2.5"),
    ({"batch_size": 0}, ConfigError, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 65}, DataError, "batch_size 65 is larger than the 64 training data"),
    ({"lr": 0.0}, ConfigError, "lr must be a finite number > 0"),
    ({"lr": float("nan")}, ConfigError, "lr must be a finite number > 0"),
    ({"weight_decay": -1.0}, ConfigError, "weight_decay"),
    ({"grad_clip": 0.0}, ConfigError, "grad_clip"),
    ({"ema_decay": 1.0}, ConfigError, r"ema_decay must be a number in \(0, 1\)"),
    ({"lr_schedule": "cosine"}, ConfigError, "lr_schedule must be an LRSchedule"),
    ({"precision": "bf16"}, ConfigError, "precision must be a Precision"),
    ({"warmup_steps": 11}, ConfigError, "warmup_steps must be an integer in"),
    ({"seed": -1}, ConfigError, "seed must be an integer >= 0, got -1"),
    ({"eval_every": -1}, ConfigError, "eval_every must be an integer >= 0, got -1"),
    ({"resume": True}, ConfigError, "resume needs a run_dir"),
    ({"checkpoint_every": 5}, ConfigError, "checkpoint_every needs a run_dir"),
    ({"config": {"f": object()}}, ConfigError, "config must be JSON-able"),
    ({"loss": "elbo"}, ConfigError, "loss must be a Pyro ELBO"),
    ({"device": "tpu"}, ConfigError, "device"),
    ({"distributed": 2}, ConfigError, "distributed must be a pyrodiff.distributed"),
    ({"eval_data": torch.zeros(4, 3)}, DataError, r"validation data must have shape \(batch, 2\)"),
]
if not torch.cuda.is_available():
    BAD_OPTIONS.append(({"device": "cuda"}, DeviceError, "CUDA is not available"))


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_bad_options_fail_with_one_clear_line_and_write_nothing(tmp_path, options, error, message):
    x = _gaussian_data(64)
    run = tmp_path / "run"
    kwargs = {"updates": 10, "batch_size": 16, "progress": False}
    kwargs.update(options)
    if "checkpoint_every" not in options and "resume" not in options:
        kwargs["run_dir"] = run
    with pytest.raises(error, match=message) as info:
        fit(*_mlp_pair(), x, **kwargs)
    assert "\n" not in str(info.value)
    assert not run.exists()


@pytest.mark.parametrize(
    "data, error, message",
    [
        (torch.tensor([[0.0, float("nan")]] * 8), DataError, "NaN or inf"),
        (torch.zeros(8, 3), DataError, r"must have shape \(batch, 2\)"),
        (torch.zeros(0, 2), DataError, "empty"),
        (torch.zeros(8, 2, dtype=torch.long), DataError, "floating-point"),
        ([[0.0, 1.0]], DataError, "Dataset or a torch.Tensor"),
    ],
    ids=["nan", "shape", "empty", "int", "list"],
)
def test_bad_data_is_refused(data, error, message):
    with pytest.raises(error, match=message):
        fit(*_mlp_pair(), data, updates=2, batch_size=1, progress=False)


def test_mismatched_guide_is_refused():
    model, _ = _mlp_pair(T=4)
    with pytest.raises(ModelMismatchError, match="T = 5"):
        fit(model, ForwardGuide(linear_schedule(5)), _gaussian_data(8), updates=1, batch_size=4,
            progress=False)  # fmt: skip


def test_history_round_trips_and_tolerates_a_cut_last_line(tmp_path):
    x = _gaussian_data(32)
    h = fit(*_mlp_pair(), Dataset("g", x, x[:8]), updates=3, batch_size=8, progress=False)
    path = h.save(tmp_path / "m.jsonl")
    loaded = History.load(path)
    assert loaded.records == h.records and loaded.final_step == 3
    with open(path, "a") as f:
        f.write('{"step": 4, "kind": "tr')  # a write cut short by a kill
    assert History.load(path).records == h.records
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match=":2 is not valid JSON"):
        History.load(path)


def test_pyro_param_store_is_not_used():
    x = _gaussian_data(16)
    fit(*_mlp_pair(), x, updates=2, batch_size=8, progress=False)
    assert len(pyro.get_param_store()) == 0


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 50),
    data=st.data(),
)
def test_epoch_sampler_batches_are_distinct_and_its_state_replays(n, data):
    b = data.draw(st.integers(1, n))
    cut = data.draw(st.integers(0, 12))
    sampler = EpochSampler(n, b, seed=data.draw(st.integers(0, 2**31)))
    seen_this_epoch: set[int] = set()
    for _ in range(cut):
        fresh_epoch = sampler.perm is None or sampler.pos + b > n
        idx = sampler.next().tolist()
        assert len(idx) == b == len(set(idx)) and all(0 <= i < n for i in idx)
        if fresh_epoch:
            seen_this_epoch = set()
        # without replacement within an epoch: no index twice before the permutation renews
        assert seen_this_epoch.isdisjoint(idx)
        seen_this_epoch |= set(idx)
    saved = sampler.state_dict()
    expected = [sampler.next().tolist() for _ in range(5)]
    replay = EpochSampler(n, b, seed=0)
    replay.load_state_dict(saved)
    assert [replay.next().tolist() for _ in range(5)] == expected


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.sampled_from(list(LRSchedule)),
    total=st.integers(1, 500),
    data=st.data(),
)
def test_learning_rate_stays_within_zero_and_the_base_rate(schedule, total, data):
    warmup = data.draw(st.integers(0, total))
    step = data.draw(st.integers(0, total - 1))
    lr = learning_rate(schedule, 0.3, step, total, warmup)
    assert 0.0 <= lr <= 0.3
    if warmup and step < warmup:
        assert lr == pytest.approx(0.3 * (step + 1) / warmup)


# --- chunked copies of a batch (pyrodiff.infer.chunks) -------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 7),
    copies=st.integers(1, 20),
    budget=st.integers(1, 60),
    dims=st.integers(1, 3),
)
def test_repeated_chunks_are_the_repeated_batch_within_the_budget(n, copies, budget, dims):
    from pyrodiff.infer.chunks import repeated_chunks

    x0 = torch.randn((n,) + (2,) * dims)
    chunks = list(repeated_chunks(x0, copies, budget))
    assert torch.equal(torch.cat([c.x for c in chunks]), x0.repeat((copies,) + (1,) * dims))
    assert [c.start for c in chunks] == [
        sum(c.size for c in chunks[:i]) for i in range(len(chunks))
    ]
    # each chunk holds at most the budget's rows, or one copy when the budget is below N
    assert all(c.size * n <= max(budget, n) and c.x.shape[0] == c.size * n for c in chunks)
    assert all(c.size == max(1, budget // n) for c in chunks[:-1])


def test_evaluate_split_gives_the_standard_error_of_its_per_datum_elbos():
    """elbo_se is the sample standard deviation of the per-datum ELBO estimates over √N: the
    same draws as elbo_terms with the evaluation's generator."""
    x = _gaussian_data(32)
    model, guide = _mlp_pair()
    out = evaluate_split(model, guide, x, num_levels=None, seed=5)
    with torch.no_grad():
        elbo = elbo_terms(model, guide, x, generator=torch.Generator().manual_seed(5)).elbo
    assert out["elbo"] == pytest.approx(elbo.mean().item(), rel=1e-12)
    assert out["elbo_se"] == pytest.approx(elbo.std().item() / math.sqrt(32), rel=1e-12)
    assert evaluate_split(model, guide, x[:1], num_levels=None)["elbo_se"] is None
