"""Whether a guide's factors have closed forms that the vectorised estimators can read."""

from __future__ import annotations

__all__ = ["CLOSED_FORM_METHODS", "has_closed_forms"]

CLOSED_FORM_METHODS = ("marginal_moments", "posterior_moments")
"""The methods a closed-form guide provides: (mean, std) of q(x_t | x_0) and of
q(x_{t−1} | x_t, x_0), for a per-datum timestep tensor."""


def has_closed_forms(guide) -> bool:
    """True when ``guide`` (an instance or a class) gives q(x_t | x_0) and q(x_{t−1} | x_t, x_0)
    in closed form: :class:`~pyrodiff.ForwardGuide` and
    :class:`~pyrodiff.guides.LearnedScheduleGuide`, not the amortised learned guides.

    Such a guide's joint q(x_{1:T} | x_0) is a Gaussian chain whose every factor can be evaluated
    at all t at once, which is what :func:`~pyrodiff.infer.elbo_terms`,
    :class:`~pyrodiff.infer.DiffusionELBO` and the vectorised bounds of
    :mod:`pyrodiff.infer.bounds` need; for other guides they fall back to (or ask for) Pyro's
    traces.
    """
    return all(callable(getattr(guide, name, None)) for name in CLOSED_FORM_METHODS)
