"""Estimators and bounds: the timestep-sampled ELBO, the per-step decomposition, exact evidence."""

from .elbo import DiffusionELBO, ELBOTerms, bits_per_dim, elbo_terms, prior_kl, step_terms
from .exact import affine_reverse_kernels, exact_elbo_terms, exact_log_evidence
from .timesteps import TimestepSampler, UniformTimesteps

__all__ = [
    "DiffusionELBO",
    "ELBOTerms",
    "TimestepSampler",
    "UniformTimesteps",
    "affine_reverse_kernels",
    "bits_per_dim",
    "elbo_terms",
    "exact_elbo_terms",
    "exact_log_evidence",
    "prior_kl",
    "step_terms",
]
from .bounds import (  # noqa: E402
    BoundEstimate,
    BoundsReport,
    EstimatorSpread,
    PSISDiagnostic,
    ScheduleVarianceELBO,
    bounds_report,
    elbo_estimate,
    estimator_spread,
    iwae_bound,
    log_weights,
    pareto_khat,
    psis_diagnostic,
    sitewise_elbo_terms,
)

__all__ += [
    "BoundEstimate",
    "BoundsReport",
    "EstimatorSpread",
    "PSISDiagnostic",
    "ScheduleVarianceELBO",
    "bounds_report",
    "elbo_estimate",
    "estimator_spread",
    "iwae_bound",
    "log_weights",
    "pareto_khat",
    "psis_diagnostic",
    "sitewise_elbo_terms",
]
from .objectives import HybridLoss, SimpleLoss, simple_weights  # noqa: E402
from .timesteps import (  # noqa: E402
    AntitheticTimesteps,
    ImportanceTimesteps,
    LowDiscrepancyTimesteps,
    StepBins,
    StratifiedTimesteps,
    bin_steps,
    log_spaced_bins,
)

__all__ += [
    "AntitheticTimesteps",
    "HybridLoss",
    "ImportanceTimesteps",
    "LowDiscrepancyTimesteps",
    "SimpleLoss",
    "StepBins",
    "StratifiedTimesteps",
    "bin_steps",
    "log_spaced_bins",
    "simple_weights",
]
