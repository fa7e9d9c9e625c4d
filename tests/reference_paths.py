"""Independent references for the T = ∞ bound under a log-SNR schedule per dimension.

Nothing here imports pyrodiff (numpy and math only): the tests pass the schedule's parameters
and the linear denoiser's matrix in as plain arrays. Everything is float64.

Notation. Dimension j has log-SNR λ_j(t) = λ0_j + (λ1_j − λ0_j) ρ_j(t) with
ρ_j(t) = (e^{a_j t} − 1)/(e^{a_j} − 1) (a_j ≠ 0), so λ_j runs from λ0_j at t = 0 to λ1_j at t = 1.
z_t = α ⊙ x + σ ⊙ ε with α_j² = sigmoid(λ_j), σ_j² = sigmoid(−λ_j); u_j = e^{λ_j} is the SNR, and
y = z_t / σ = √u ⊙ x + ε. The linear denoiser is x̂ = (B + U)⁻¹ U^{1/2} y, U = diag(u): the
posterior mean of x ~ N(0, B⁻¹) when B is symmetric positive definite, and the posterior mean
of no distribution when B is not symmetric. With x fixed its error is

    x − x̂ = (B + U)⁻¹ B x − (B + U)⁻¹ U^{1/2} ε,

so E_ε (x − x̂)_j² = [(B + U)⁻¹ B x]_j² + [(B + U)⁻¹ U (B + U)⁻ᵀ]_jj.
"""

from __future__ import annotations

import math

import numpy as np


def sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(v, dtype=np.float64)))


def path(t, start, end, rate):
    """(λ(t), λ′(t)) of the exponential path, shape t.shape + (D,)."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    start, end, rate = (np.asarray(v, dtype=np.float64) for v in (start, end, rate))
    denom = np.expm1(rate)
    rho = np.expm1(rate * t) / denom
    drho = rate * np.exp(rate * t) / denom
    return start + (end - start) * rho, (end - start) * drho


def error_moments(x, B, lam, noise=None):
    """E_ε (x − x̂)_j² at log-SNR ``lam`` (shape (..., D)) for data ``x`` (D,); with ``noise``
    (D,) given, the squared error (x − x̂)_j² at that ε instead."""
    u = np.exp(lam)
    D = B.shape[0]
    M = B + u[..., :, None] * np.eye(D)  # B + U, batched over the leading shape
    bias = np.linalg.solve(M, np.broadcast_to(B @ x, u.shape)[..., None])[..., 0]
    gain = np.linalg.solve(M, np.sqrt(u)[..., :, None] * np.eye(D))  # (B + U)⁻¹ U^{1/2}
    if noise is not None:
        return (bias - (gain @ noise[:, None])[..., 0]) ** 2
    return bias**2 + (gain**2).sum(-1)


def integrand(t, x, B, start, end, rate, noise=None):
    """½ Σ_j (−λ′_j) e^{λ_j} E_ε (x − x̂)_j² at times ``t`` (or at fixed ε = ``noise``)."""
    lam, slope = path(t, start, end, rate)
    return 0.5 * (-slope * np.exp(lam) * error_moments(x, B, lam, noise)).sum(-1)


def gauss_legendre(f, order=16, tol=1e-10, max_panels=2**14):
    """∫_0^1 f(t) dt by composite Gauss–Legendre (``order`` nodes a panel), the panels doubled
    until the value moves by less than ``tol``; returns (value, the last move)."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    previous, panels = None, 1
    while panels <= max_panels:
        edges = np.linspace(0.0, 1.0, panels + 1)
        a, b = edges[:-1, None], edges[1:, None]
        t = (0.5 * (b - a) * nodes + 0.5 * (a + b)).ravel()
        w = (0.5 * (b - a) * weights).ravel()
        value = float(np.dot(w, f(t)))
        if previous is not None and abs(value - previous) < tol:
            return value, abs(value - previous)
        previous, panels = value, 2 * panels
    raise RuntimeError(f"quadrature did not settle to {tol} with {max_panels} panels")


def gaussian_kl(m0, C0, m1, C1):
    """KL(N(m0, C0) ‖ N(m1, C1)) for full covariance matrices."""
    D = len(m0)
    solve = np.linalg.solve(C1, C0)
    diff = np.asarray(m1) - np.asarray(m0)
    _, logdet0 = np.linalg.slogdet(C0)
    _, logdet1 = np.linalg.slogdet(C1)
    return 0.5 * (np.trace(solve) + diff @ np.linalg.solve(C1, diff) - D + logdet1 - logdet0)


def forward_moments(x, lam):
    """q(z | x) = N(α ⊙ x, diag σ²) at log-SNR ``lam`` (D,)."""
    alpha, var = np.sqrt(sigmoid(lam)), sigmoid(-np.asarray(lam))
    return alpha * x, np.diag(var)


def pushed_forward(B, lam):
    """p′_λ: x ~ N(0, B⁻¹) taken to log-SNR ``lam``, N(0, A B⁻¹ A + diag σ²)."""
    alpha, var = np.sqrt(sigmoid(lam)), sigmoid(-np.asarray(lam))
    cov = np.linalg.inv(B)
    return np.zeros(len(lam)), alpha[:, None] * cov * alpha[None, :] + np.diag(var)


def kl_to_pushed_forward(x, B, lam):
    """KL(q(z_λ | x) ‖ p′_λ)."""
    return gaussian_kl(*forward_moments(x, lam), *pushed_forward(B, lam))


def reconstruction(lam0):
    """E_q log p(x | z_0) for the Gaussian decoder N(z_0/α_0, e^{−λ0}): z_0/α_0 = x + e^{−λ0/2} ε,
    so the expected log density is Σ_j (−½ log 2π + ½ λ0_j − ½), whatever x."""
    lam0 = np.asarray(lam0, dtype=np.float64)
    return float((-0.5 * math.log(2 * math.pi) + 0.5 * lam0 - 0.5).sum())


def prior_kl(x, lam1):
    """KL(q(z_1 | x) ‖ N(0, I))."""
    mean, cov = forward_moments(x, lam1)
    return gaussian_kl(mean, cov, np.zeros(len(x)), np.eye(len(x)))


def diffusion_loss_closed_form(x, B, start, end):
    """L_∞(x) = KL(q(z_0 | x) ‖ p′_{λ(0)}) − KL(q(z_1 | x) ‖ p′_{λ(1)}), any path: correct when
    x̂ is the posterior mean of p′ = N(0, B⁻¹), i.e. B symmetric positive definite."""
    return kl_to_pushed_forward(x, B, start) - kl_to_pushed_forward(x, B, end)


def bound_closed_form(x, B, start, end):
    """The T = ∞ bound E_q log p(x | z_0) − KL(q(z_1 | x) ‖ p(z_1)) − L_∞(x) for symmetric B."""
    return reconstruction(start) - prior_kl(x, end) - diffusion_loss_closed_form(x, B, start, end)


def bound_by_quadrature(x, B, start, end, rate, tol=1e-10):
    """The same bound with L_∞ by quadrature over t along the path (any B); returns (bound, the
    quadrature's last move)."""
    loss, moved = gauss_legendre(lambda t: integrand(t, x, B, start, end, rate), tol=tol)
    return reconstruction(start) - prior_kl(x, end) - loss, moved


def mutual_information(cov, snr):
    """I(x; y) for x ~ N(0, cov), y = √snr ⊙ x + ε: ½ log det(I + U^{1/2} cov U^{1/2})."""
    root = np.sqrt(np.asarray(snr, dtype=np.float64))
    return 0.5 * np.linalg.slogdet(np.eye(len(root)) + root[:, None] * cov * root[None, :])[1]


def mmse(cov, snr):
    """E (x_j − E[x_j | y])² = [(cov⁻¹ + U)⁻¹]_jj for the same channel."""
    return np.diag(np.linalg.inv(np.linalg.inv(cov) + np.diag(snr)))
