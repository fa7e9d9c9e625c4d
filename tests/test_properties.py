"""Property-based tests (hypothesis): the command line's argument handling, and the closed-form
math of the forward chain under random shapes, dtypes and extreme schedules."""

import contextlib
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrodiff.cli import main
from pyrodiff.config import RunConfig
from pyrodiff.gaussian import (
    eps_from_x0,
    gaussian_kl,
    q_marginal,
    q_posterior,
    q_sample,
    q_step,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)
from pyrodiff.likelihoods import DiscretizedNormal
from pyrodiff.schedules import NoiseSchedule

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- the command line ---------------------------------------------------------------------------

# (flag, config field, kind, lowest valid value, range drawn); ranges stay small so a valid
# draw builds a small model
INT_FLAGS = [
    ("--T", "num_steps", 1, (-3, 40)),
    ("--depth", "depth", 1, (-3, 4)),
    ("--updates", "updates", 1, (-3, 300)),
    ("--batch-size", "batch_size", 1, (-3, 64)),
    ("--warmup-steps", "warmup_steps", 0, (-3, 300)),
    ("--seed", "seed", 0, (-3, 10**6)),
]
OPTIONAL_INT_FLAGS = [
    ("--width", "width", 1, (-3, 48)),
    ("--eval-every", "eval_every", 0, (-3, 100)),
    ("--checkpoint-every", "checkpoint_every", 0, (-3, 100)),
]
OFF_VALUE = {"width": None, "eval_every": 0, "checkpoint_every": 0}
"""What 'off' means: no width given (the default), or evaluating/checkpointing at the end only."""
ENUM_FLAGS = {
    "--schedule": ("schedule", ["linear", "cosine"]),
    "--parameterization": ("parameterization", ["epsilon", "x0", "v"]),
    "--precision": ("precision", ["fp32", "bf16"]),
    "--lr-schedule": ("lr_schedule", ["constant", "cosine", "warmup_cosine"]),
    "--timesteps": (
        "timesteps",
        ["uniform", "stratified", "low_discrepancy", "antithetic", "importance"],
    ),
}
JUNK = st.sampled_from(["", "ten", "1.5", "1e3", "0x10", "--", "none?", "∞"])


@st.composite
def flag_values(draw):
    """Some flags with valid or invalid text, and the oracle's verdict: the expected value of
    each field, or None when the command must refuse it."""
    flags: list[str] = []
    expected: dict = {}
    valid = True
    for flag, name, low, (a, b) in INT_FLAGS + OPTIONAL_INT_FLAGS:
        if not draw(st.booleans()):
            continue
        optional = (flag, name, low, (a, b)) in OPTIONAL_INT_FLAGS
        # mostly well-formed values, so that both verdicts are common
        kinds = ["int"] * 6 + ["junk"] + (["off"] if optional else [])
        choice = draw(st.sampled_from(kinds))
        if choice == "int":
            value = draw(st.integers(a, b) if draw(st.booleans()) else st.integers(low, b))
            flags += [flag, str(value)]
            valid &= value >= low
            expected[name] = value
        elif choice == "off":
            flags += [flag, draw(st.sampled_from(["off", "none", "OFF"]))]
            expected[name] = OFF_VALUE[name]
        else:
            flags += [flag, draw(JUNK)]
            valid = False
    for flag, name in (("--lr", "lr"), ("--ema-decay", "ema_decay")):
        if draw(st.booleans()):
            value = draw(
                st.floats(1e-6, 0.99) | st.floats(allow_nan=True, allow_infinity=True, width=32)
            )
            flags += [flag, repr(value)]
            if name == "lr":
                valid &= math.isfinite(value) and value > 0
            else:
                valid &= 0 < value < 1  # d = 0 would be no average: that is "off"
            expected[name] = value
    for flag, (name, values) in ENUM_FLAGS.items():
        if draw(st.booleans()):
            good = draw(st.sampled_from([True] * 4 + [False]))
            text = (
                draw(st.sampled_from(values))
                if good
                else draw(st.sampled_from(["", "x", "linear2", "eps"]))
            )
            flags += [flag, text.upper() if draw(st.booleans()) else text]
            valid &= good
            expected[name] = text
    if valid:
        # an unset warm-up follows the number of updates and always fits it
        updates = expected.get("updates", RunConfig().updates)
        warmup = expected.get("warmup_steps", 0)
        schedule = expected.get("lr_schedule", "warmup_cosine")
        valid &= not (schedule == "warmup_cosine" and warmup >= updates)
        valid &= warmup <= updates  # the warm-up fits in the run whatever the schedule
    return flags, (expected if valid else None)


def _run(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@SETTINGS
@given(drawn=flag_values())
def test_train_flags_give_the_expected_config_or_one_clean_error(drawn, tmp_path):
    flags, expected = drawn
    out = tmp_path / "never"
    status, printed, err = _run(
        ["train", "--dry-run", "--data", "eight_gaussians", *flags, "--out", str(out)]
    )
    assert not out.exists()
    if expected is None:
        assert status != 0
        lines = err.strip().splitlines()
        assert (
            len(lines) == 1 and lines[0].startswith("pyrodiff: error: ") and "Traceback" not in err
        )
        return
    assert status == 0, err
    config = RunConfig.from_json(printed[: printed.rindex("}") + 1])
    assert config == RunConfig(data="eight_gaussians", **expected)


@SETTINGS
@given(config=st.builds(
    RunConfig,
    data=st.sampled_from(["digits", "two_moons", "checkerboard", "my/data.npz"]),
    num_steps=st.integers(1, 5000),
    schedule=st.sampled_from(["linear", "cosine"]),
    width=st.none() | st.integers(1, 512),
    parameterization=st.sampled_from(["epsilon", "x0", "v"]),
    variance=st.sampled_from(["beta", "posterior", "per_step", "learned_range"]),
    lr=st.floats(1e-8, 10.0),
    grad_clip=st.none() | st.floats(1e-3, 1e3),
    ema_decay=st.none() | st.floats(0.0, 0.9999, exclude_min=True),
    seed=st.integers(0, 2**31),
    updates=st.integers(1, 5000),
))  # fmt: skip
def test_config_json_round_trip(config):
    assert RunConfig.from_json(config.to_json()) == config


# --- the closed-form math -----------------------------------------------------------------------

betas_st = st.lists(
    st.one_of(
        st.floats(1e-6, 0.999),
        st.sampled_from([1e-6, 1e-4, 0.5, 0.9, 0.999]),  # extreme ends, often
    ),
    min_size=1,
    max_size=25,
)
event_shapes = st.sampled_from([(1,), (3,), (2, 2), (1, 2, 3)])
dtypes = st.sampled_from([torch.float32, torch.float64])


@SETTINGS
@given(betas=betas_st)
def test_schedule_tables(betas):
    s = NoiseSchedule(betas)
    ab, om = s.alpha_bar, s.one_minus_alpha_bar
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all() and (ab > 0).all()
    torch.testing.assert_close(om, 1 - ab, rtol=1e-9, atol=1e-15)
    assert (s.log_snr[1:-1] > s.log_snr[2:]).all()
    # composition: Var(x_t | x_0) = α_t Var(x_{t−1} | x_0) + β_t, one step at a time
    torch.testing.assert_close(om[1:], s.alphas[1:] * om[:-1] + s.betas[1:], rtol=1e-9, atol=0)
    # β̃_1 = 0 (x_0 is known given x_1 and x_0) and 0 < β̃_t ≤ β_t for t ≥ 2
    post = s.posterior_variance
    assert post[1] == 0
    assert (post[2:] > 0).all() and (post[2:] <= s.betas[2:] * (1 + 1e-12)).all()


@SETTINGS
@given(betas=betas_st.filter(lambda b: len(b) >= 2), shape=event_shapes, n=st.integers(1, 4),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_bayes_rule_links_step_marginal_and_posterior(betas, shape, n, seed):
    """q(x_{t−1} | x_t, x_0) q(x_t | x_0) = q(x_t | x_{t−1}) q(x_{t−1} | x_0) at random points."""
    s = NoiseSchedule(betas)
    g = torch.Generator().manual_seed(seed)
    x0, x_prev, x_t = (torch.randn((n, *shape), generator=g, dtype=torch.float64) for _ in range(3))
    t = int(torch.randint(2, s.num_steps + 1, (), generator=g))
    lhs = q_posterior(s, x0, x_t, t).log_prob(x_prev) + q_marginal(s, x0, t).log_prob(x_t)
    rhs = q_step(s, x_prev, t).log_prob(x_t) + q_marginal(s, x0, t - 1).log_prob(x_prev)
    scale = lhs.abs() + rhs.abs() + 1
    assert ((lhs - rhs).abs() <= 1e-9 * scale).all()


@SETTINGS
@given(betas=betas_st, shape=event_shapes, dtype=dtypes, seed=st.integers(0, 2**31))
def test_prediction_conversions_invert_each_other(betas, shape, dtype, seed):
    s = NoiseSchedule(betas)
    g = torch.Generator().manual_seed(seed)
    n = 3
    x0 = torch.randn((n, *shape), generator=g).to(dtype)
    noise = torch.randn((n, *shape), generator=g).to(dtype)
    t = torch.randint(1, s.num_steps + 1, (n,), generator=g)
    x_t = q_sample(s, x0, t, noise)
    marg = q_marginal(s, x0, t)
    torch.testing.assert_close(x_t, marg.loc + marg.scale * noise)  # a reparameterised draw
    # error grows with the conditioning: 1/√ᾱ_t to get x_0 back, 1/√(1−ᾱ_t) to get ε back
    ab = s.alpha_bar[t].reshape((n,) + (1,) * len(shape))
    cond = 1 / torch.minimum(ab, 1 - ab).sqrt()
    tol = (50 * torch.finfo(dtype).eps * cond * (1 + x0.abs() + noise.abs())).to(dtype)
    eps = eps_from_x0(s, x_t, t, x0)
    assert ((eps - noise).abs() <= tol).all()
    assert ((x0_from_eps(s, x_t, t, noise) - x0).abs() <= tol).all()
    v = v_from_x0(s, x_t, t, x0)
    assert ((x0_from_v(s, x_t, t, v) - x0).abs() <= tol).all()


@SETTINGS
@given(
    shape=st.sampled_from([(4,), (2, 3)]),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
    log_scale=st.floats(-6, 3),
)
def test_gaussian_kl_is_the_divergence(shape, dtype, seed, log_scale):
    g = torch.Generator().manual_seed(seed)
    mq, mp = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
    vq = (torch.rand(shape, generator=g).to(dtype) + 0.1) * math.exp(log_scale)
    vp = (torch.rand(shape, generator=g).to(dtype) + 0.1) * math.exp(log_scale)
    kl = gaussian_kl(mq, vq, mp, vp)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, vq.sqrt()), torch.distributions.Normal(mp, vp.sqrt())
    )
    torch.testing.assert_close(kl, ref, rtol=1e-4, atol=1e-5)
    assert (kl >= -1e-6).all()
    assert gaussian_kl(mq, vq, mq, vq).abs().max() <= 1e-6


@SETTINGS
@given(
    levels=st.integers(2, 40),
    loc=st.floats(-3, 3),
    log_scale=st.floats(-8, 2),
)
def test_discretised_normal_masses_sum_to_one(levels, loc, log_scale):
    """The K bins (outer ones open) partition the line: their probabilities sum to one, however
    narrow or wide the Gaussian."""
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    d = DiscretizedNormal(
        torch.full((levels,), loc, dtype=torch.float64),
        torch.full((levels,), math.exp(log_scale), dtype=torch.float64),
        levels,
    )
    total = d.log_prob(grid).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)
