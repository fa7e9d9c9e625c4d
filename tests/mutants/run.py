"""Plant small bugs one at a time in a scratch copy of the tree; report which ones the tests miss.

    OMP_NUM_THREADS=1 python tests/mutants/run.py [--only NAME ...] [--list]

Each mutant replaces one exact piece of source text (which must occur exactly once) and runs
only the tests aimed at it, so a mutant costs seconds, not the whole suite. The real tree is
never modified: everything happens in a temporary copy, which is deleted at the end. The tests
first run on the unmodified copy; a mutant is *killed* when its tests then fail, *survives*
when they pass, and is *stale* when its source text is no longer in the tree (the code moved:
update the mutant). The exit status is 0 only when every mutant is killed.

Not collected by pytest (tests/conftest.py ignores this folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str  # the class of bug, for the report
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


REF = "tests/test_reference_exact.py"
ENUM = "tests/test_timestep_enumeration.py"
PINNED = "tests/test_samplers_pinned.py"
CONT = "tests/test_continuous.py"
ONE_HOME = "tests/test_one_home.py"
ADAPT = "tests/test_adaptive.py"
PER_DIM = "tests/test_per_dimension.py"

MUTANTS = [
    # schedules per dimension: a wrong axis is invisible to a scalar schedule's 1-D tables
    Mutant(
        "per_dim_coef_time_axis_not_moved_before_the_event",
        "wrong axis",
        "pyrodiff/gaussian.py",
        "value = value.permute(order)",
        "value = value.contiguous()",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_posterior_coef_x0_rolls_the_event_axis",
        "wrong axis",
        "pyrodiff/gaussian.py",
        "return s.alpha_bar.sqrt().roll(1, -1) * s.betas",
        "return s.alpha_bar.sqrt().roll(1, 0) * s.betas",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_posterior_coef_xt_rolls_the_event_axis",
        "wrong axis",
        "pyrodiff/gaussian.py",
        "s.one_minus_alpha_bar.roll(1, -1) / s.one_minus_alpha_bar",
        "s.one_minus_alpha_bar.roll(1, 0) / s.one_minus_alpha_bar",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_decoder_variance_indexes_the_event_axis",
        "wrong axis",
        "pyrodiff/models/diffusion.py",
        "post[..., 1] = post[..., 2] if s.num_steps >= 2",
        "post[1] = post[2] if s.num_steps >= 2",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_reverse_moments_read_the_table_as_scalar",
        "wrong axis",
        "pyrodiff/models/diffusion.py",
        "e = self._table_event_dim",
        "e = 0",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_exact_expected_square_transposed",
        "swapped index",
        "pyrodiff/infer/exact.py",
        "+ v_t @ (M**2).T",
        "+ v_t @ (M**2)",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_exact_reconstruction_without_half",
        "factor of 1/2",
        "pyrodiff/infer/exact.py",
        "- e_sq / (2 * var[1])).sum(-1)",
        "- e_sq / var[1]).sum(-1)",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_discretize_keeps_time_on_the_first_axis",
        "wrong axis",
        "pyrodiff/schedules/continuous.py",
        "lam = lam.movedim(0, -1)",
        "lam = lam",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_discrete_denoiser_reads_alpha_bar_2",
        "off-by-one in t",
        "pyrodiff/models/continuous.py",
        "ab1 = schedule.alpha_bar[..., 1]",
        "ab1 = schedule.alpha_bar[..., 2]",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_ddim_direction_drops_sigma",
        "dropped term",
        "pyrodiff/sampling.py",
        "dir_coef = (1 - ab_s - var).clamp(min=0.0).sqrt().to(x.dtype)",
        "dir_coef = (1 - ab_s).clamp(min=0.0).sqrt().to(x.dtype)",
        (PER_DIM,),
    ),
    Mutant(
        "per_dim_schedule_error_names_the_wrong_step",
        "off-by-one in t",
        "pyrodiff/schedules/discrete.py",
        "{index[-1] + first_step}",
        "{index[-1]}",
        (PER_DIM,),
    ),
    # the four bugs that once survived the whole suite
    Mutant(
        "ddim_variance_eta_not_squared",
        "squared vs not",
        "pyrodiff/sampling.py",
        "var = eta**2 * (1 - ab_s)",
        "var = eta * (1 - ab_s)",
        (PINNED,),
    ),
    Mutant(
        "prior_kl_scale_not_squared",
        "squared vs not",
        "pyrodiff/gaussian.py",
        "kl = gaussian_kl(loc, scale**2, prior_loc, prior_scale**2)",
        "kl = gaussian_kl(loc, scale**2, prior_loc, prior_scale)",
        (REF,),
    ),
    Mutant(
        "guide_swap_learned_arm_is_the_forward_chain",
        "swapped component",
        "examples/guide_swap.py",
        "    return LearnedGuide(model, GuideStructure.TOP_DOWN, hidden=hidden)",
        "    return ForwardGuide(model.schedule)",
        ("tests/test_guide_swap_claim.py",),
    ),
    Mutant(
        "diffusion_elbo_drops_L_T",
        "dropped term",
        "pyrodiff/infer/elbo.py",
        "loss = prior_kl(model, guide, x0) + sampled",
        "loss = sampled",
        (ENUM,),
    ),
    # more off-by-ones, dropped factors and swaps in the samplers and the exact answers
    Mutant(
        "respaced_denoiser_sees_the_respaced_index",
        "off-by-one in t",
        "pyrodiff/sampling.py",
        "return self.inner(x_t, self.tau[t])",
        "return self.inner(x_t, t)",
        (PINNED,),
    ),
    Mutant(
        "ddim_reads_alpha_bar_t_for_s",
        "off-by-one in t",
        "pyrodiff/sampling.py",
        "x = ab_s**0.5 * x0_hat + dir_coef * eps_hat",
        "x = ab_t**0.5 * x0_hat + dir_coef * eps_hat",
        (PINNED,),
    ),
    Mutant(
        "prior_draw_drops_the_scale",
        "dropped factor",
        "pyrodiff/sampling.py",
        "return model.prior_loc.to(z) + model.prior_scale.to(z) * z",
        "return model.prior_loc.to(z) + z",
        (PINNED,),
    ),
    Mutant(
        "exact_evidence_prior_scale_not_squared",
        "squared vs not",
        "pyrodiff/infer/exact.py",
        "S = eye * model.prior_scale.double().to(A.device) ** 2",
        "S = eye * model.prior_scale.double().to(A.device)",
        (REF,),
    ),
    Mutant(
        "decoder_posterior_variance_off_by_one",
        "off-by-one in t",
        "pyrodiff/models/diffusion.py",
        "post[..., 1] = post[..., 2] if s.num_steps >= 2",
        "post[..., 1] = post[..., 3] if s.num_steps >= 3",
        (REF,),
    ),
    Mutant(
        "learned_range_interpolation_swapped",
        "swapped variance",
        "pyrodiff/models/diffusion.py",
        "var = torch.exp(frac * hi + (1 - frac) * lo)",
        "var = torch.exp(frac * lo + (1 - frac) * hi)",
        ("tests/test_model_and_guide.py::test_reverse_moments_follow_the_formula",),
    ),
    Mutant(
        "forward_step_variance_not_square_rooted",
        "squared vs not",
        "pyrodiff/gaussian.py",
        "b = coef(schedule_table(schedule, _sqrt_betas, x_prev), t, x_prev, e)",
        "b = coef(schedule_table(schedule, _sqrt_betas, x_prev), t, x_prev, e) ** 2",
        ("tests/test_gaussian.py",),
    ),
    Mutant(
        "importance_weight_off_by_one",
        "off-by-one in t",
        "pyrodiff/infer/timesteps.py",
        "return t, (1.0 / probs[t - 1])",
        "return t, (1.0 / probs[t % num_steps])",
        (ENUM,),
    ),
    Mutant(
        "stratified_drops_the_jitter",
        "dropped term",
        "pyrodiff/infer/timesteps.py",
        "u = (strata + _unit(batch, device, generator)) / batch",
        "u = strata / batch",
        (ENUM,),
    ),
    Mutant(
        "low_discrepancy_not_wrapped",
        "dropped term",
        "pyrodiff/infer/timesteps.py",
        "u = torch.remainder(\n            u0 + torch.arange(batch, device=device, dtype=torch.float64) / batch, 1.0\n        )",
        "u = u0 + torch.arange(batch, device=device, dtype=torch.float64) / batch",
        (ENUM,),
    ),
    # signs
    Mutant(
        "gaussian_kl_sign",
        "sign",
        "pyrodiff/gaussian.py",
        "torch.log(var_p) - torch.log(var_q) + (var_q",
        "torch.log(var_p) + torch.log(var_q) + (var_q",
        ("tests/test_gaussian.py", REF),
    ),
    Mutant(
        "v_parameterisation_sign",
        "sign",
        "pyrodiff/gaussian.py",
        "        g_x, g_o = sa, -so",
        "        g_x, g_o = sa, so",
        (REF,),
    ),
    Mutant(
        "x0_from_v_sign",
        "sign",
        "pyrodiff/gaussian.py",
        "return sa * x_t - so * v",
        "return sa * x_t + so * v",
        ("tests/test_gaussian.py",),
    ),
    # factors of ½
    Mutant(
        "exact_reconstruction_without_half",
        "factor of 1/2",
        "pyrodiff/infer/exact.py",
        "rec = -0.5 * D * torch.log(2 * math.pi * var[1]) - e_sq / (2 * var[1])",
        "rec = -0.5 * D * torch.log(2 * math.pi * var[1]) - e_sq / var[1]",
        (REF,),
    ),
    Mutant(
        "gaussian_kl_without_half",
        "factor of 1/2",
        "pyrodiff/gaussian.py",
        "    return 0.5 * (\n        torch.log(var_p)",
        "    return 1.0 * (\n        torch.log(var_p)",
        ("tests/test_gaussian.py", REF),
    ),
    # squared vs not
    Mutant(
        "marginal_std_not_square_rooted",
        "squared vs not",
        "pyrodiff/gaussian.py",
        "torch.stack([s.alpha_bar.sqrt(), s.one_minus_alpha_bar.sqrt()])",
        "torch.stack([s.alpha_bar.sqrt(), s.one_minus_alpha_bar])",
        (REF,),
    ),
    Mutant(
        "oracle_variance_c0_not_squared",
        "squared vs not",
        "pyrodiff/models/oracle.py",
        "+ c0**2 * V",
        "+ c0 * V",
        (REF,),
    ),
    # off-by-one in t
    Mutant(
        "posterior_coef_reads_alpha_bar_t_not_t_minus_1",
        "off-by-one in t",
        "pyrodiff/gaussian.py",
        "return s.alpha_bar.sqrt().roll(1, -1) * s.betas",
        "return s.alpha_bar.sqrt() * s.betas",
        (REF,),
    ),
    Mutant(
        "ancestral_noise_index_off_by_one",
        "off-by-one in t",
        "pyrodiff/sampling.py",
        "            x = mean + std * draw(i - 1)",
        "            x = mean + std * draw(i)",
        (PINNED,),
    ),
    Mutant(
        "uniform_from_unit_off_by_one",
        "off-by-one in t",
        "pyrodiff/infer/timesteps.py",
        "return (u * num_steps).long().clamp(0, num_steps - 1) + 1",
        "return (u * num_steps).long().clamp(1, num_steps)",
        (ENUM,),
    ),
    Mutant(
        "antithetic_mirror_off_by_one",
        "off-by-one in t",
        "pyrodiff/infer/timesteps.py",
        "t = torch.cat([t, num_steps + 1 - t[: batch - half]])",
        "t = torch.cat([t, num_steps - t[: batch - half]])",
        (ENUM,),
    ),
    # dropped terms
    Mutant(
        "exact_kl_drops_log_posterior_variance",
        "dropped term",
        "pyrodiff/gaussian.py",
        "num_dims * (torch.log(var_p) - torch.log(var_q) + var_q / var_p - 1)",
        "num_dims * (torch.log(var_p) + var_q / var_p - 1)",
        (REF,),
    ),
    Mutant(
        "ddim_direction_ignores_sigma",
        "dropped term",
        "pyrodiff/sampling.py",
        "dir_coef = max(1 - ab_s - var, 0.0) ** 0.5",
        "dir_coef = max(1 - ab_s, 0.0) ** 0.5",
        (PINNED,),
    ),
    # the schedule-variance objective, one home for both routes
    Mutant(
        "schedule_variance_table_route_drops_the_factor_two",
        "dropped factor",
        "pyrodiff/infer/objectives.py",
        "grad_outputs=[2.0 * sampled.detach(), -torch.ones_like(loss)],",
        "grad_outputs=[sampled.detach(), -torch.ones_like(loss)],",
        ("tests/test_learned_schedule.py", CONT),
    ),
    Mutant(
        "schedule_variance_table_route_keeps_the_loss_own_gradient",
        "sign flip",
        "pyrodiff/infer/objectives.py",
        "grad_outputs=[2.0 * sampled.detach(), -torch.ones_like(loss)],",
        "grad_outputs=[2.0 * sampled.detach(), torch.zeros_like(loss)],",
        ("tests/test_learned_schedule.py", CONT),
    ),
    Mutant(
        "schedule_variance_entry_route_squares_the_whole_loss",
        "wrong term",
        "pyrodiff/infer/continuous.py",
        "return loss if reroute is None else reroute.reroute(loss, diff)",
        "return loss if reroute is None else reroute.reroute(loss, loss)",
        (CONT,),
    ),
    Mutant(
        "joint_optim_skips_a_released_parameter",
        "dropped step",
        "pyrodiff/optim.py",
        "if p.grad is None and p in self._released:",
        "if p.grad is None and p in self._released and False:",
        ("tests/test_optim.py",),
    ),
    Mutant(
        "simple_loss_drops_one_over_T",
        "dropped factor",
        "pyrodiff/infer/objectives.py",
        "return weight.to(simple.dtype) / T * simple",
        "return weight.to(simple.dtype) * simple",
        (ENUM,),
    ),
    Mutant(
        "hybrid_loss_drops_lambda",
        "dropped factor",
        "pyrodiff/infer/objectives.py",
        "return weight / T * simple + self.lam * vlb",
        "return weight / T * simple + vlb",
        (ENUM,),
    ),
    # swapped variance
    Mutant(
        "beta_variance_reads_posterior_variance",
        "swapped variance",
        "pyrodiff/models/diffusion.py",
        "            var = schedule_table(sched, _beta, like)",
        "            var = schedule_table(sched, _posterior_variance, like)",
        (REF, PINNED),
    ),
    # unnormalised weights
    Mutant(
        "importance_probabilities_unnormalised",
        "unnormalised weights",
        "pyrodiff/infer/timesteps.py",
        "shaped = torch.where(total > 0, rms / total.clamp(min=1e-300), uniform)",
        "shaped = torch.where(total > 0, rms, uniform)",
        (ENUM,),
    ),
    Mutant(
        "pareto_khat_weights_not_normalised",
        "unnormalised weights",
        "pyrodiff/infer/bounds.py",
        "log_w.detach().double().flatten() - log_w.max()",
        "log_w.detach().double().flatten()",
        ("tests/test_psis_known_tail.py",),
    ),
    # log-mean-exp vs mean
    Mutant(
        "iwae_mean_of_log_weights",
        "log-mean-exp vs mean",
        "pyrodiff/infer/bounds.py",
        "torch.logsumexp(lw, 1) - math.log(num_samples)",
        "lw.mean(1)",
        ("tests/test_bounds.py",),
    ),
    # the single homes of the noise process (λ = +log SNR) and of the bound's end terms
    Mutant(
        "log_snr_sign_flipped",
        "sign",
        "pyrodiff/schedules/log_snr.py",
        "    return torch.sigmoid(log_snr)",
        "    return torch.sigmoid(-log_snr)",
        (CONT, ONE_HOME, "tests/test_learned_schedule.py"),
    ),
    Mutant(
        "prior_kl_variance_not_squared",
        "squared vs not",
        "pyrodiff/gaussian.py",
        "kl = gaussian_kl(loc, scale**2, prior_loc",
        "kl = gaussian_kl(loc, scale, prior_loc",
        (REF, CONT),
    ),
    Mutant(
        "reconstruction_scale_squared",
        "squared vs not",
        "pyrodiff/likelihoods.py",
        "self.distribution(loc, scale).log_prob(x0)",
        "self.distribution(loc, scale**2).log_prob(x0)",
        (REF, CONT),
    ),
    Mutant(
        "continuous_decoder_scale_without_half",
        "factor of 1/2",
        "pyrodiff/models/continuous.py",
        "scale = torch.exp(-0.5 * log_snr_0)",
        "scale = torch.exp(-log_snr_0)",
        (CONT,),
    ),
    Mutant(
        "isotropic_kl_squared_error_without_its_weight",
        "dropped factor",
        "pyrodiff/gaussian.py",
        "+ sq_dist / var_p",
        "+ sq_dist",
        (REF,),
    ),
    Mutant(
        "simple_loss_weight_not_squared",
        "squared vs not",
        "pyrodiff/infer/objectives.py",
        "((target - mean) / b) ** 2",
        "(target - mean) ** 2 / b",
        ("tests/test_objectives.py",),
    ),
    Mutant(
        "grey_level_step_off_by_one",
        "off-by-one",
        "pyrodiff/likelihoods.py",
        "return (high - low) / (num_levels - 1)",
        "return (high - low) / num_levels",
        (ONE_HOME, "tests/test_data.py"),
    ),
    # state not restored
    Mutant(
        "ema_does_not_restore_the_weights",
        "state not restored",
        "pyrodiff/train/ema.py",
        "                    p.copy_(saved[name])",
        "                    pass",
        ("tests/test_train.py::test_ema_is_the_exponential_average_and_swaps_back_exactly",),
    ),
    # the adaptive (multivariate, latent-conditioned) noise process
    Mutant(
        "log_snr_posterior_std_of_the_noisier_end",
        "wrong variable",
        "pyrodiff/gaussian.py",
        "    sd = r.sqrt() * sigma_s",
        "    sd = r.sqrt() * sigma_t",
        (ADAPT,),
    ),
    Mutant(
        "step_integrand_ratio_not_expm1",
        "off by one",
        "pyrodiff/infer/continuous.py",
        "rate = torch.expm1(_per_datum(lam_prev, x0) - lam_n)",
        "rate = torch.exp(_per_datum(lam_prev, x0) - lam_n)",
        (ADAPT,),
    ),
    Mutant(
        "multivariate_basis_slope_missing_sharpness",
        "missing factor",
        "pyrodiff/schedules/multivariate.py",
        "slopes = sharp * s * (1.0 - s) / span",
        "slopes = s * (1.0 - s) / span",
        (ADAPT,),
    ),
    Mutant(
        "latent_kl_sign",
        "sign flip",
        "pyrodiff/infer/continuous.py",
        "loss = loss if latent_kl is None else loss + latent_kl",
        "loss = loss if latent_kl is None else loss - latent_kl",
        (ADAPT,),
    ),
    Mutant(
        "adaptive_guide_top_at_the_wrong_time",
        "off by one",
        "pyrodiff/guides/adaptive.py",
        "log_snr_marginal_moments(self._log_snr(1.0, z, noise_process, like), like)",
        "log_snr_marginal_moments(self._log_snr(times[T - 1], z, noise_process, like), like)",
        (ADAPT,),
    ),
    Mutant(
        "x0_from_epsilon_swaps_alpha_and_sigma",
        "wrong variable",
        "pyrodiff/gaussian.py",
        "        return (x_t - sigma * output) / alpha",
        "        return (x_t - alpha * output) / sigma",
        (ADAPT,),
    ),
]


def _pytest(where: Path, tests, timeout: float) -> tuple[int, float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["CI"] = "1"  # derandomised Hypothesis: a mutant's verdict does not depend on the draw
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=where, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, time.monotonic() - start, "timed out"
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode, time.monotonic() - start, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to plant")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:48s} {m.kind:22s} {m.path}")
        return 0
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("mutant names must be unique")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyrodiff-mutants-") as tmp:
        scratch = Path(tmp) / "tree"
        shutil.copytree(
            ROOT,
            scratch,
            ignore=shutil.ignore_patterns(
                ".git",
                "__pycache__",
                "*.pyc",
                ".pytest_cache",
                ".hypothesis",
                "outputs",
                ".ruff_cache",
            ),
        )
        targets = sorted({t for m in mutants for t in m.tests})
        rc, secs, last = _pytest(scratch, targets, args.timeout)
        print(
            f"baseline: {len(targets)} test targets on the unmodified copy: {last} ({secs:.1f} s)"
        )
        if rc != 0:
            print("the tests fail without any mutant; fix them first")
            return 2
        killed, survived, stale = [], [], []
        for m in mutants:
            path = scratch / m.path
            source = path.read_text()
            if source.count(m.old) != 1:
                stale.append(m.name)
                print(f"STALE     {m.name}: the text to replace occurs {source.count(m.old)} times")
                continue
            path.write_text(source.replace(m.old, m.new))
            try:
                rc, secs, last = _pytest(scratch, m.tests, args.timeout)
            finally:
                path.write_text(source)
            if rc == 0:
                survived.append(m.name)
                verdict = "SURVIVED"
            else:
                killed.append(m.name)
                verdict = "killed  "
            print(f"{verdict}  {m.name:48s} [{m.kind}] {secs:5.1f} s  {last}", flush=True)
    wall = time.monotonic() - start
    planted = len(killed) + len(survived)
    print(
        f"planted {planted}, killed {len(killed)}, survived {len(survived)}, stale {len(stale)}; "
        f"wall time {wall:.0f} s"
    )
    if survived:
        print("survivors: " + ", ".join(survived))
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
