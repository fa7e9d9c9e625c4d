"""RunConfig: JSON round trips, validation messages, and what build() constructs."""

import json

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrodiff import ConfigError, DataError, Parameterization, ReverseVariance
from pyrodiff.config import (
    CONFIG_VERSION,
    HVAE_NUM_STEPS,
    GuideKind,
    ModelKind,
    Objective,
    RunConfig,
    ScheduleKind,
    TimestepKind,
    build,
    build_schedule,
)
from pyrodiff.data import load_digits
from pyrodiff.guides import ForwardGuide
from pyrodiff.infer import DiffusionELBO, elbo_terms
from pyrodiff.likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood
from pyrodiff.networks import MLPDenoiser, UNetDenoiser
from pyrodiff.schedules import cosine_schedule, linear_schedule
from pyrodiff.train import LRSchedule, Precision

TINY_2D = dict(data="eight_gaussians", num_steps=4, width=8, depth=1, updates=3, warmup_steps=0)


def test_defaults_are_the_documented_digits_run():
    cfg = RunConfig()
    assert cfg.data == "digits" and cfg.model is ModelKind.DIFFUSION
    assert cfg.guide is GuideKind.FIXED and cfg.objective is Objective.ELBO
    assert cfg.num_steps == 100 and cfg.schedule is ScheduleKind.LINEAR
    assert cfg.parameterization is Parameterization.EPSILON
    assert cfg.lr_schedule is LRSchedule.WARMUP_COSINE and cfg.batch_size == 128
    # the best configuration of docs/objectives.md: the full bound, importance-sampled t
    # (None resolves to it), improved DDPM's learned variance
    assert cfg.variance is ReverseVariance.LEARNED_RANGE and cfg.timesteps is None
    # what depends on the run's length scales with it
    assert (cfg.updates, cfg.warmup_steps, cfg.eval_every, cfg.checkpoint_every) == (
        1500,
        1500 // 20,
        1500 // 5,
        1500 // 10,
    )


@pytest.mark.parametrize("updates", [1, 2, 5, 20, 50, 99, 101, 1000, 100_000])
def test_every_number_of_updates_is_a_valid_run_with_the_other_defaults(updates):
    cfg = RunConfig(updates=updates)
    # fit's warm-up rule (updates // 20, at least 1), leaving at least one update after it
    assert cfg.warmup_steps == min(max(1, updates // 20), updates - 1) < updates
    assert 1 <= cfg.checkpoint_every <= max(1, updates) and cfg.eval_every >= 1
    assert RunConfig().replace(updates=updates) == cfg


def test_unset_guide_objective_and_T_are_chosen_to_fit_the_model_and_guide():
    hvae = RunConfig(model="hvae")
    assert hvae.guide is GuideKind.LEARNED and hvae.objective is Objective.TRACE_ELBO
    assert hvae.num_steps == HVAE_NUM_STEPS
    assert {"guide", "objective", "num_steps"} <= set(hvae.chosen_fields)
    assert RunConfig(guide="learned").objective is Objective.TRACE_ELBO
    assert RunConfig(guide="learned_schedule").objective is Objective.ELBO
    # replace chooses again what was not given, but keeps what was
    assert RunConfig().replace(model="hvae") == hvae
    with pytest.raises(ConfigError, match="needs guide learned"):
        RunConfig(guide="fixed").replace(model="hvae")
    # config.json holds the chosen values: reading it back chooses nothing
    again = RunConfig.from_json(hvae.to_json())
    assert again == hvae and again.chosen_fields == ()


def test_the_old_key_steps_is_read_as_updates_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'updates'"):
        assert RunConfig.from_dict({"steps": 7, "warmup_steps": 1}).updates == 7
    with pytest.raises(ConfigError, match="both 'steps' and 'updates'"):
        RunConfig.from_dict({"steps": 7, "updates": 7})


# written by pyrodiff 0.1.0's RunConfig(data="two_moons", model="hvae", num_steps=4, width=16,
# updates=300, ema_decay=None, grad_clip=None, eval_every=0, precision="bf16",
# lr_schedule="cosine").to_json(), before the configuration became a package
CONFIG_0_1_0 = """{
  "config_version": 1, "data": "two_moons", "num_levels": null, "model": "hvae",
  "guide": "learned", "num_steps": 4, "schedule": "linear", "network": "auto", "width": 16,
  "depth": 3, "latent_dim": null, "guide_hidden": 64, "parameterization": "epsilon",
  "variance": "learned_range", "objective": "trace_elbo", "timesteps": null, "updates": 300,
  "batch_size": 128, "lr": 0.002, "lr_schedule": "cosine", "warmup_steps": 0,
  "weight_decay": 0.0, "grad_clip": null, "ema_decay": null, "seed": 0, "device": "auto",
  "precision": "bf16", "eval_every": 0, "eval_batch_budget": 4096, "checkpoint_every": 30
}"""


def test_a_config_json_of_0_1_0_loads_and_is_written_back_unchanged():
    cfg = RunConfig.from_json(CONFIG_0_1_0)
    assert cfg == RunConfig(data="two_moons", model="hvae", num_steps=4, width=16, updates=300,
                            ema_decay=None, grad_clip=None, eval_every=0, precision="bf16",
                            lr_schedule="cosine")  # fmt: skip
    # the same keys in the same order with the same values: run folders stay comparable
    assert list(cfg.to_dict().items()) == list(json.loads(CONFIG_0_1_0).items())


def test_json_round_trip_preserves_every_field_and_type(tmp_path):
    cfg = RunConfig(
        data="two_moons",
        guide="learned_schedule",
        num_steps=7,
        schedule="cosine",
        parameterization="x0",
        variance="per_step",
        timesteps="importance",
        lr=3e-4,
        grad_clip=None,
        ema_decay=None,
        precision="bf16",
        eval_every=5,
    )
    path = tmp_path / "config.json"
    cfg.to_json(path)
    back = RunConfig.from_json(path)
    assert back == cfg
    assert back.variance is ReverseVariance.PER_STEP and back.precision is Precision.BF16
    assert RunConfig.from_json(tmp_path) == cfg  # a run folder works too
    raw = json.loads(path.read_text())
    assert raw["config_version"] == CONFIG_VERSION and raw["guide"] == "learned_schedule"


def test_missing_keys_take_defaults_and_strings_are_coerced():
    cfg = RunConfig.from_dict({"objective": "Trace-ELBO", "num_steps": 5.0})
    assert cfg.objective is Objective.TRACE_ELBO and cfg.num_steps == 5
    assert cfg.guide is GuideKind.FIXED


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"objective": "adam"}, ["objective", "elbo, trace_elbo", "hybrid"]),
        ({"schedule": "quadratic"}, ["schedule", "linear, cosine"]),
        ({"num_steps": 0}, ["num_steps", ">= 1"]),
        ({"lr": float("nan")}, ["lr", "> 0"]),
        ({"ema_decay": 1.0}, ["ema_decay", "(0, 1)"]),
        ({"ema_decay": 0.0}, ["ema_decay", "(0, 1)"]),
        ({"batch_size": 2.5}, ["batch_size", "integer"]),
        ({"device": "tpu"}, ["device", "cuda"]),
        ({"guide": "learned", "objective": "elbo"}, ["objective elbo", "learned"]),
        ({"objective": "hybrid", "variance": "beta"}, ["learned_range"]),
        ({"model": "hvae", "guide": "fixed"}, ["hvae", "learned"]),
        ({"model": "hvae", "objective": "elbo"}, ["hvae", "trace_elbo"]),
        ({"timesteps": "importance", "objective": "trace_elbo"}, ["timesteps"]),
        ({"warmup_steps": 50, "updates": 50}, ["warmup_steps", "smaller than updates"]),
    ],
)
def test_invalid_configurations_name_the_field_and_what_is_expected(changes, words):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    for word in words:
        assert word in str(info.value)
    assert "\n" not in str(info.value)


def test_from_json_refuses_unknown_keys_newer_versions_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="'hiden'"):
        RunConfig.from_dict({"hiden": 3})
    with pytest.raises(ConfigError, match="newer"):
        RunConfig.from_dict({"config_version": CONFIG_VERSION + 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json('{"steps": ')
    with pytest.raises(ConfigError, match="no configuration"):
        RunConfig.from_json(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.from_dict([1, 2])


def test_build_2d_gives_the_matching_model_guide_and_estimator():
    model, guide, data, loss = build(RunConfig(**TINY_2D))
    assert isinstance(model.denoiser, MLPDenoiser) and isinstance(guide, ForwardGuide)
    assert isinstance(loss, DiffusionELBO) and isinstance(model.likelihood, GaussianLikelihood)
    assert model.event_shape == (2,) == data.event_shape
    # the guide is the forward chain of the model's own schedule: one schedule, shared
    assert guide.schedule is model.schedule
    torch.testing.assert_close(model.schedule.alpha_bar, linear_schedule(4).alpha_bar)
    terms = elbo_terms(model, guide, data.test[:16].to(torch.get_default_dtype()))
    assert terms.diffusion.shape == (16, 3) and torch.isfinite(terms.elbo).all()


def test_build_digits_uses_a_unet_and_the_discretised_likelihood():
    digits = load_digits()
    cfg = RunConfig(num_steps=3, width=8, updates=2, warmup_steps=0)
    model, guide, data, _ = build(cfg, dataset=digits)
    assert isinstance(model.denoiser, UNetDenoiser) and data is digits
    assert isinstance(model.likelihood, DiscretizedGaussianLikelihood)
    assert model.likelihood.num_levels == 17
    x = digits.test[:2].to(torch.get_default_dtype())
    # the default learned_range variance doubles the channels: mean part, then interpolation v
    assert model.variance is ReverseVariance.LEARNED_RANGE
    assert model.denoiser(x, torch.tensor([1, 3])).shape == (2, 2, 8, 8)


def test_learned_range_doubles_the_denoiser_output():
    model, *_ = build(RunConfig(**TINY_2D, variance="learned_range"))
    out = model.denoiser(torch.zeros(5, 2), torch.ones(5, dtype=torch.long))
    assert out.shape == (5, 4)


def test_schedule_kinds_build_the_library_schedules():
    cos = build_schedule(RunConfig(schedule="cosine", num_steps=9))
    torch.testing.assert_close(cos.alpha_bar, cosine_schedule(9).alpha_bar)


@pytest.mark.parametrize(
    "objective, cls",
    [
        ("elbo", DiffusionELBO),
        ("trace_elbo", Trace_ELBO),
        ("trace_mean_field_elbo", TraceMeanField_ELBO),
    ],
)
def test_objectives_build_their_estimators(objective, cls):
    *_, loss = build(RunConfig(**TINY_2D, objective=objective))
    assert type(loss) is cls


def test_each_timestep_kind_builds_its_sampler():
    from pyrodiff.infer import timesteps as ts

    names = {
        TimestepKind.STRATIFIED: ts.StratifiedTimesteps,
        TimestepKind.ANTITHETIC: ts.AntitheticTimesteps,
        TimestepKind.IMPORTANCE: ts.ImportanceTimesteps,
        TimestepKind.UNIFORM: ts.UniformTimesteps,
    }
    for kind, cls in names.items():
        *_, loss = build(RunConfig(**TINY_2D, timesteps=kind))
        assert type(loss.timesteps) is cls


def test_learned_guides_build_and_keep_the_model_untouched():
    fixed = build(RunConfig(**TINY_2D))
    learned = build(RunConfig(**TINY_2D, guide="learned", objective="trace_elbo"))
    sched = build(RunConfig(**TINY_2D, guide="learned_schedule"))
    # the guide is one argument: the model's parameters (names and initial values) agree
    for other in (learned, sched):
        a, b = fixed.model.state_dict(), other.model.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert sum(p.numel() for p in learned.guide.parameters()) > 0
    assert sum(p.numel() for p in sched.guide.parameters()) > 0


def test_initial_weights_are_a_function_of_the_seed_only():
    torch.manual_seed(123)
    a = build(RunConfig(**TINY_2D, seed=1)).model.state_dict()
    state = torch.get_rng_state()
    b = build(RunConfig(**TINY_2D, seed=1)).model.state_dict()
    assert torch.equal(state, torch.get_rng_state())  # the caller's stream is untouched
    c = build(RunConfig(**TINY_2D, seed=2)).model.state_dict()
    w = "denoiser.inp.weight"
    assert torch.equal(a[w], b[w]) and not torch.equal(a[w], c[w])


def test_build_refuses_a_batch_larger_than_the_training_set():
    digits = load_digits()
    with pytest.raises(DataError, match="batch_size 2000 is larger than the 1300"):
        build(RunConfig(batch_size=2000, num_steps=2, updates=2), dataset=digits)


def test_num_levels_applies_only_to_files():
    with pytest.raises(ConfigError, match="num_levels applies to a .npy/.npz file"):
        build(RunConfig(**TINY_2D, num_levels=4))


def test_replace_validates_like_a_new_config():
    cfg = RunConfig(**TINY_2D)
    assert cfg.replace(seed=4).seed == 4
    with pytest.raises(ConfigError):
        cfg.replace(updates=-1)


def test_hvae_builds_with_its_own_guide_and_a_trace_objective():
    from pyrodiff.guides import HierarchicalVAEGuide
    from pyrodiff.models import HierarchicalVAE

    cfg = RunConfig(
        **{**TINY_2D, "num_steps": 3},
        model="hvae",
        guide="learned",
        objective="trace_elbo",
        latent_dim=1,
    )
    model, guide, data, loss = build(cfg)
    assert isinstance(model, HierarchicalVAE) and isinstance(guide, HierarchicalVAEGuide)
    assert tuple(model.latent_dims) == (1, 1, 1) and type(loss) is Trace_ELBO
    # one Trace_ELBO sample per datum: a finite bound on log p(x_0)
    x = data.test[:8].to(torch.get_default_dtype())
    assert torch.isfinite(torch.as_tensor(loss.loss(model, guide, x)))
