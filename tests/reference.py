"""Independent references for linear-Gaussian diffusion models, written from ᾱ_t alone.

Nothing here imports pyrodiff: the tests read a model's weights and schedule values as plain
tensors and pass them in, so a formula shared by the library and these references would have
to be typed twice, the same wrong way, for a bug to hide. Everything is float64.

Notation (DDPM): β_t = 1 − ᾱ_t/ᾱ_{t−1}, α_t = 1 − β_t, q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),
q(x_{t−1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, β̃_t I) with c0_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t),
ct_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
A linear denoiser outputs W_t x_t + b_t; the reverse mean is the posterior mean with x_0
replaced by the x̂_0 that output implies, so p(x_{t−1} | x_t) = N(A_t x_t + a_t, σ_t² I).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor


class Target(enum.Enum):
    """What the linear denoiser's output is read as."""

    EPSILON = enum.auto()
    X0 = enum.auto()
    V = enum.auto()


class FixedVariance(enum.Enum):
    BETA = enum.auto()
    POSTERIOR = enum.auto()


def betas(ab: Tensor) -> Tensor:
    """β_t for t = 0 … T (β_0 = 0)."""
    ab = ab.double()
    out = torch.zeros_like(ab)
    out[1:] = 1 - ab[1:] / ab[:-1]
    return out


def posterior_coefs(ab: Tensor, t: int) -> tuple[float, float, float]:
    """(c0_t, ct_t, β̃_t) of q(x_{t−1} | x_t, x_0), t ≥ 1 (β̃_1 = 0, c0_1 = 1, ct_1 = 0)."""
    ab = ab.double()
    a_t, a_s = float(ab[t]), float(ab[t - 1])
    beta = 1 - a_t / a_s
    c0 = math.sqrt(a_s) * beta / (1 - a_t)
    ct = math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
    return c0, ct, beta * (1 - a_s) / (1 - a_t)


def fixed_variances(ab: Tensor, kind: FixedVariance) -> Tensor:
    """σ_t² for t = 0 … T: β_t, or β̃_t with the degenerate β̃_1 = 0 replaced by β̃_2
    (β_1 when T = 1), the decoder's scale under DDPM's "small" choice."""
    b = betas(ab)
    if kind is FixedVariance.BETA:
        return b
    T = ab.numel() - 1
    out = torch.tensor([0.0] + [posterior_coefs(ab, t)[2] for t in range(1, T + 1)])
    out[1] = out[2] if T >= 2 else b[1]
    return out


def x0_hat_affine(ab: Tensor, W: Tensor, bias: Tensor, t: int, target: Target):
    """(G, h) with x̂_0 = G x_t + h for the output W_t x_t + b_t read as ``target``."""
    a = float(ab[t])
    eye = torch.eye(W.shape[-1], dtype=torch.float64)
    Wt, bt = W[t].double(), bias[t].double()
    if target is Target.X0:
        return Wt, bt
    if target is Target.EPSILON:  # x_0 = (x_t − √(1−ᾱ) ε) / √ᾱ
        return (eye - math.sqrt(1 - a) * Wt) / math.sqrt(a), -math.sqrt(1 - a) * bt / math.sqrt(a)
    # v = √ᾱ ε − √(1−ᾱ) x_0 and x_t = √ᾱ x_0 + √(1−ᾱ) ε give x_0 = √ᾱ x_t − √(1−ᾱ) v
    return math.sqrt(a) * eye - math.sqrt(1 - a) * Wt, -math.sqrt(1 - a) * bt


@dataclass(frozen=True)
class LinearGaussian:
    """p(x_T) = N(prior_loc, diag(prior_var)), p(x_{t−1} | x_t) = N(A[t] x_t + a[t], var[t] I)
    for t = 1 … T (t = 1 is the Gaussian decoder); index 0 unused."""

    A: Tensor
    a: Tensor
    var: Tensor
    prior_loc: Tensor
    prior_var: Tensor

    @property
    def num_steps(self) -> int:
        return self.A.shape[0] - 1


def kernels(ab, W, bias, target: Target, var: Tensor, prior_loc, prior_scale) -> LinearGaussian:
    """The affine reverse kernels of a linear denoiser, from ᾱ and the weights alone."""
    ab = ab.double()
    T, D = ab.numel() - 1, W.shape[-1]
    eye = torch.eye(D, dtype=torch.float64)
    A = torch.zeros(T + 1, D, D, dtype=torch.float64)
    a = torch.zeros(T + 1, D, dtype=torch.float64)
    for t in range(1, T + 1):
        G, h = x0_hat_affine(ab, W, bias, t, target)
        if t == 1:  # the decoder's mean is x̂_0 itself
            A[t], a[t] = G, h
            continue
        c0, ct, _ = posterior_coefs(ab, t)
        A[t], a[t] = c0 * G + ct * eye, c0 * h
    loc = torch.as_tensor(prior_loc, dtype=torch.float64).expand(D).clone()
    pvar = torch.as_tensor(prior_scale, dtype=torch.float64).expand(D) ** 2
    return LinearGaussian(A, a, var.double().clone(), loc, pvar.clone())


def log_normal(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x; mean, cov) per row of x, through a Cholesky factor."""
    L = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(L, (x - mean).T, upper=False)
    D = cov.shape[0]
    return (
        -0.5 * (z**2).sum(0) - torch.log(torch.diagonal(L)).sum() - 0.5 * D * math.log(2 * math.pi)
    )


def evidence(lg: LinearGaussian, x0: Tensor) -> Tensor:
    """log p(x_0) per datum, from :func:`marginal`."""
    mean, cov = marginal(lg)
    return log_normal(x0.double(), mean, cov)


def marginal(lg: LinearGaussian) -> tuple[Tensor, Tensor]:
    """(mean, covariance) of p(x_0): x_0 = Φ_T x_T + Σ_t Φ_{t−1} (a_t + σ_t z_t), Φ_k = A_1 ⋯ A_k,
    so the marginal is Gaussian with mean Φ_T m + Σ Φ_{t−1} a_t and covariance
    Φ_T S Φ_Tᵀ + Σ σ_t² Φ_{t−1} Φ_{t−1}ᵀ (summed from the data end, unlike a forward recursion)."""
    D = lg.A.shape[-1]
    phi = torch.eye(D, dtype=torch.float64)
    mean = torch.zeros(D, dtype=torch.float64)
    cov = torch.zeros(D, D, dtype=torch.float64)
    for t in range(1, lg.num_steps + 1):
        mean = mean + phi @ lg.a[t]
        cov = cov + lg.var[t] * phi @ phi.T
        phi = phi @ lg.A[t]
    mean = mean + phi @ lg.prior_loc
    cov = cov + phi @ torch.diag(lg.prior_var) @ phi.T
    return mean, 0.5 * (cov + cov.T)


@dataclass(frozen=True)
class Terms:
    """Per datum: reconstruction E log p(x_0 | x_1) (N,), L_{t−1} for t = 2 … T (N, T − 1), L_T (N,)."""

    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor

    @property
    def elbo(self) -> Tensor:
        return self.reconstruction - self.diffusion.sum(-1) - self.prior


def _kl_normal(mq: Tensor, vq: Tensor, mp: Tensor, vp: Tensor) -> Tensor:
    """Σ_d KL(N(mq, vq) ‖ N(mp, vp)), written out."""
    return 0.5 * (torch.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1).sum(-1)


def elbo_terms(lg: LinearGaussian, ab_q: Tensor, x0: Tensor) -> Terms:
    """Every ELBO term in closed form under the forward chain with ᾱ = ``ab_q``.

    Each term is an expectation of a quadratic in x_t ~ N(m_t, v_t I):
    E‖M x_t + r‖² = ‖M m_t + r‖² + v_t ‖M‖_F².
    """
    x0 = x0.double()
    ab_q = ab_q.double()
    D, T = x0.shape[-1], lg.num_steps
    eye = torch.eye(D, dtype=torch.float64)

    def moments(t):
        return math.sqrt(ab_q[t]) * x0, float(1 - ab_q[t])

    m1, v1 = moments(1)
    M = -lg.A[1]
    r = x0 - lg.a[1]
    sq = ((m1 @ M.T + r) ** 2).sum(-1) + v1 * (M**2).sum()
    rec = -0.5 * D * torch.log(2 * math.pi * lg.var[1]) - sq / (2 * lg.var[1])
    cols = []
    for t in range(2, T + 1):
        c0, ct, post = posterior_coefs(ab_q, t)
        m, v = moments(t)
        M = ct * eye - lg.A[t]
        r = c0 * x0 - lg.a[t]
        sq = ((m @ M.T + r) ** 2).sum(-1) + v * (M**2).sum()
        s2 = lg.var[t]  # a tensor: exact gradients reach a learned variance
        cols.append(0.5 * D * (torch.log(s2 / post) + post / s2 - 1) + sq / (2 * s2))
    mT, vT = moments(T)
    prior = _kl_normal(mT, torch.full_like(mT, vT), lg.prior_loc, lg.prior_var)
    diff = torch.stack(cols, 1) if cols else x0.new_zeros(x0.shape[0], 0)
    return Terms(rec, diff, prior)


def step_term(lg: LinearGaussian, ab_q: Tensor, x0: Tensor, t: int, eps: Tensor) -> Tensor:
    """The one-sample term at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: log p(x_0 | x_1) at t = 1,
    −KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)) for t ≥ 2."""
    x0, eps = x0.double(), eps.double()
    a = float(ab_q[t])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    mean = x_t @ lg.A[t].T + lg.a[t]
    s2 = float(lg.var[t])
    if t == 1:
        D = x0.shape[-1]
        return -0.5 * D * math.log(2 * math.pi * s2) - ((x0 - mean) ** 2).sum(-1) / (2 * s2)
    c0, ct, post = posterior_coefs(ab_q, t)
    mq = c0 * x0 + ct * x_t
    return -_kl_normal(mq, torch.full_like(mq, post), mean, torch.full_like(mean, s2))


def target_value(ab: Tensor, x0: Tensor, eps: Tensor, t: int, target: Target) -> Tensor:
    """What a denoiser is trained to output at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
    a = float(ab[t])
    if target is Target.EPSILON:
        return eps.double()
    if target is Target.X0:
        return x0.double()
    return math.sqrt(a) * eps.double() - math.sqrt(1 - a) * x0.double()


def denoiser_output(ab, W, bias, x0, eps, t: int) -> Tensor:
    """W_t x_t + b_t at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
    a = float(ab[t])
    x_t = math.sqrt(a) * x0.double() + math.sqrt(1 - a) * eps.double()
    return x_t @ W[t].double().T + bias[t].double()


def isotropic_gaussian_oracle(
    ab: Tensor, mean: Tensor, std: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """The true reverse process of x_0 ~ N(mean, std² I) as a linear x_0-predictor.

    Returns (W, b, σ², prior_loc, prior_scale). E[x_0 | x_t] = m + k_t (x_t − √ᾱ_t m) with
    k_t = √ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t) (Gaussian conditioning of (x_0, x_t)); the posterior
    variance V_t = s² (1 − ᾱ_t) / (ᾱ_t s² + 1 − ᾱ_t) adds c0_t² V_t to β̃_t in q(x_{t−1} | x_t).
    """
    ab = ab.double()
    mean = torch.as_tensor(mean, dtype=torch.float64)
    T, D = ab.numel() - 1, mean.numel()
    s2 = float(std) ** 2
    W = torch.zeros(T + 1, D, D, dtype=torch.float64)
    b = torch.zeros(T + 1, D, dtype=torch.float64)
    var = torch.ones(T + 1, dtype=torch.float64)
    for t in range(1, T + 1):
        a = float(ab[t])
        k = math.sqrt(a) * s2 / (a * s2 + 1 - a)
        V = s2 * (1 - a) / (a * s2 + 1 - a)
        W[t] = k * torch.eye(D, dtype=torch.float64)
        b[t] = mean * (1 - k * math.sqrt(a))
        c0, _, post = posterior_coefs(ab, t)
        var[t] = V if t == 1 else post + c0**2 * V
    aT = float(ab[T])
    return W, b, var, math.sqrt(aT) * mean, math.sqrt(aT * s2 + 1 - aT)


def from_model(model, detach: bool = True) -> LinearGaussian:
    """The kernels of a linear-Gaussian pyrodiff model, read from its attributes only: ᾱ, the
    LinearDenoiser's weights, the enum *names* of its options, log σ_t² when learned, the prior.
    With ``detach=False`` the kernels stay differentiable in the weights (for exact gradients)."""
    keep = (lambda x: x.detach().cpu()) if detach else (lambda x: x.cpu())
    ab = model.schedule.alpha_bar.detach().double().cpu()
    W, b = keep(model.denoiser.weight), keep(model.denoiser.bias)
    target = Target[model.parameterization.name]
    if model.variance.name == "PER_STEP":
        var = keep(model.log_variance).double().exp()
    else:
        var = fixed_variances(ab, FixedVariance[model.variance.name])
    loc, scale = model.prior_loc.detach().cpu(), model.prior_scale.detach().cpu()
    return kernels(ab, W, b, target, var, loc, scale)


# --- Schedules per dimension ----------------------------------------------------------------
#
# ᾱ is a (D, T + 1) table: dimension j has its own chain, q(x_{t,j} | x_{0,j}) =
# N(√ᾱ_{j,t} x_{0,j}, 1 − ᾱ_{j,t}), independent across j given x_0. Every coefficient above
# becomes a vector over j, written here dimension by dimension from ᾱ_{j,·} alone (scalar
# arithmetic per j, nothing vectorised across the schedule), so a wrong axis in the library's
# tables cannot be repeated here. A linear denoiser's reverse kernels stay affine,
# p(x_{t−1} | x_t) = N(A_t x_t + a_t, diag(σ_t²)), with diagonal σ_t².


def per_dim_posterior_coefs(ab: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
    """(c0_t, ct_t, β̃_t) as (D,) vectors, each dimension from its own ᾱ row (t ≥ 1)."""
    rows = [posterior_coefs(ab[j], t) for j in range(ab.shape[0])]
    return tuple(torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in range(3))


def per_dim_fixed_variances(ab: Tensor, kind: FixedVariance) -> Tensor:
    """σ_t² for t = 0 … T and each dimension, shape (T + 1, D): :func:`fixed_variances` of
    each dimension's own chain."""
    return torch.stack([fixed_variances(ab[j], kind) for j in range(ab.shape[0])], 1)


def per_dim_x0_hat_affine(ab: Tensor, W: Tensor, bias: Tensor, t: int, target: Target):
    """(G, h) with x̂_0 = G x_t + h; the conversion of row j uses dimension j's ᾱ_{j,t}."""
    D = W.shape[-1]
    Wt, bt = W[t].double(), bias[t].double()
    G = torch.zeros(D, D, dtype=torch.float64)
    h = torch.zeros(D, dtype=torch.float64)
    for j in range(D):
        a = float(ab[j, t])
        if target is Target.X0:
            G[j], h[j] = Wt[j], bt[j]
        elif target is Target.EPSILON:  # x_0,j = (x_t,j − √(1−ᾱ_j) ε_j) / √ᾱ_j
            G[j] = -math.sqrt(1 - a) * Wt[j] / math.sqrt(a)
            G[j, j] += 1 / math.sqrt(a)
            h[j] = -math.sqrt(1 - a) * bt[j] / math.sqrt(a)
        else:  # x_0,j = √ᾱ_j x_t,j − √(1−ᾱ_j) v_j
            G[j] = -math.sqrt(1 - a) * Wt[j]
            G[j, j] += math.sqrt(a)
            h[j] = -math.sqrt(1 - a) * bt[j]
    return G, h


def per_dim_kernels(
    ab, W, bias, target: Target, var: Tensor, prior_loc, prior_scale
) -> LinearGaussian:
    """The affine reverse kernels of a linear denoiser under a (D, T + 1) ᾱ; ``var`` is
    (T + 1, D). Row j of A_t is c0_{j,t} G_t[j] + ct_{j,t} e_j (the posterior mean of x_{t−1,j})."""
    ab = ab.double()
    T, D = ab.shape[1] - 1, W.shape[-1]
    A = torch.zeros(T + 1, D, D, dtype=torch.float64)
    a = torch.zeros(T + 1, D, dtype=torch.float64)
    for t in range(1, T + 1):
        G, h = per_dim_x0_hat_affine(ab, W, bias, t, target)
        if t == 1:
            A[t], a[t] = G, h
            continue
        c0, ct, _ = per_dim_posterior_coefs(ab, t)
        for j in range(D):
            A[t, j] = c0[j] * G[j]
            A[t, j, j] += ct[j]
            a[t, j] = c0[j] * h[j]
    loc = torch.as_tensor(prior_loc, dtype=torch.float64).expand(D).clone()
    pvar = torch.as_tensor(prior_scale, dtype=torch.float64).expand(D) ** 2
    return LinearGaussian(A, a, var.double().clone(), loc, pvar.clone())


def per_dim_evidence(lg: LinearGaussian, x0: Tensor) -> Tensor:
    """log p(x_0) per datum for kernels with diagonal σ_t² (``lg.var`` of shape (T + 1, D)):
    x_0 = Φ_T x_T + Σ_t Φ_{t−1} (a_t + diag(σ_t) z_t), Φ_k = A_1 ⋯ A_k."""
    D = lg.A.shape[-1]
    phi = torch.eye(D, dtype=torch.float64)
    mean = torch.zeros(D, dtype=torch.float64)
    cov = torch.zeros(D, D, dtype=torch.float64)
    for t in range(1, lg.num_steps + 1):
        mean = mean + phi @ lg.a[t]
        cov = cov + phi @ torch.diag(lg.var[t]) @ phi.T
        phi = phi @ lg.A[t]
    mean = mean + phi @ lg.prior_loc
    cov = cov + phi @ torch.diag(lg.prior_var) @ phi.T
    return log_normal(x0.double(), mean, 0.5 * (cov + cov.T))


def per_dim_elbo_terms(lg: LinearGaussian, ab_q: Tensor, x0: Tensor) -> Terms:
    """Every ELBO term in closed form under the forward chain with a (D, T + 1) ᾱ = ``ab_q``
    and kernels with diagonal σ_t². For x_t ~ N(m_t, diag(v_t)) and a row M_j,
    E(M_j x_t + r_j)² = (M_j m_t + r_j)² + Σ_k M_jk² v_k; each dimension's KL is the
    one-dimensional one."""
    x0 = x0.double()
    ab_q = ab_q.double()
    T = lg.num_steps

    def moments(t):
        a = ab_q[:, t]
        return a.sqrt() * x0, 1 - a  # (N, D), (D,)

    def expected_sq(M, r, m, v):  # (N, D): one column per row j of M
        return (m @ M.T + r) ** 2 + (M**2 * v).sum(-1)

    m1, v1 = moments(1)
    sq = expected_sq(-lg.A[1], x0 - lg.a[1], m1, v1)
    s2 = lg.var[1]
    rec = (-0.5 * torch.log(2 * math.pi * s2) - sq / (2 * s2)).sum(-1)
    cols = []
    for t in range(2, T + 1):
        c0, ct, post = per_dim_posterior_coefs(ab_q, t)
        m, v = moments(t)
        sq = expected_sq(torch.diag(ct) - lg.A[t], c0 * x0 - lg.a[t], m, v)
        s2 = lg.var[t]
        cols.append((0.5 * (torch.log(s2 / post) + post / s2 - 1) + sq / (2 * s2)).sum(-1))
    mT, vT = moments(T)
    prior = _kl_normal(mT, vT.expand_as(mT), lg.prior_loc, lg.prior_var)
    diff = torch.stack(cols, 1) if cols else x0.new_zeros(x0.shape[0], 0)
    return Terms(rec, diff, prior)


def per_dim_step_term(lg: LinearGaussian, ab_q: Tensor, x0: Tensor, t: int, eps: Tensor) -> Tensor:
    """The one-sample term at x_t = √ᾱ_t ⊙ x_0 + √(1 − ᾱ_t) ⊙ ε (ᾱ_t a (D,) column)."""
    x0, eps = x0.double(), eps.double()
    a = ab_q[:, t].double()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    mean = x_t @ lg.A[t].T + lg.a[t]
    s2 = lg.var[t].expand_as(mean)
    if t == 1:
        return (-0.5 * torch.log(2 * math.pi * s2) - (x0 - mean) ** 2 / (2 * s2)).sum(-1)
    c0, ct, post = per_dim_posterior_coefs(ab_q, t)
    mq = c0 * x0 + ct * x_t
    return -_kl_normal(mq, post.expand_as(mq), mean, s2)


def per_dim_gaussian_oracle(ab: Tensor, mean: Tensor, std: float):
    """The true reverse process of x_0 ~ N(mean, std² I) under a (D, T + 1) ᾱ, as a linear
    x_0-predictor: :func:`isotropic_gaussian_oracle` of each dimension's own chain (the
    dimensions are independent under both the data and q). Returns (W, b, σ² (T + 1, D),
    prior_loc, prior_scale (D,))."""
    ab = ab.double()
    mean = torch.as_tensor(mean, dtype=torch.float64)
    D, T = ab.shape[0], ab.shape[1] - 1
    W = torch.zeros(T + 1, D, D, dtype=torch.float64)
    b = torch.zeros(T + 1, D, dtype=torch.float64)
    var = torch.ones(T + 1, D, dtype=torch.float64)
    p_loc = torch.zeros(D, dtype=torch.float64)
    p_scale = torch.zeros(D, dtype=torch.float64)
    for j in range(D):
        Wj, bj, vj, lj, sj = isotropic_gaussian_oracle(ab[j], mean[j : j + 1], std)
        W[:, j, j], b[:, j], var[:, j] = Wj[:, 0, 0], bj[:, 0], vj
        p_loc[j], p_scale[j] = lj[0], sj
    return W, b, var, p_loc, p_scale


def per_dim_from_model(model, detach: bool = True) -> LinearGaussian:
    """:func:`from_model` for a model over a schedule per dimension (ᾱ of shape (D, T + 1))."""
    keep = (lambda x: x.detach().cpu()) if detach else (lambda x: x.cpu())
    ab = model.schedule.alpha_bar.detach().double().cpu()
    W, b = keep(model.denoiser.weight), keep(model.denoiser.bias)
    target = Target[model.parameterization.name]
    if model.variance.name == "PER_STEP":
        var = keep(model.log_variance).double().exp().T  # (D, T + 1) → (T + 1, D)
    else:
        var = per_dim_fixed_variances(ab, FixedVariance[model.variance.name])
    loc, scale = model.prior_loc.detach().cpu(), model.prior_scale.detach().cpu()
    return per_dim_kernels(ab, W, b, target, var, loc, scale)
