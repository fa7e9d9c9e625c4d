"""What an evaluation reports, as objects: each has ``to_dict()`` (JSON) and ``table()`` (the
text the command line prints). Computing lives in :mod:`pyrodiff.train.evaluate`; the command
line and the studies print these and add nothing of their own."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = [
    "ComparisonReport",
    "DataGap",
    "ELBOEvaluation",
    "EvaluationReport",
    "ImportanceBound",
    "PSISSummary",
    "RunSummary",
    "format_table",
    "stderr_of_mean",
]

KHAT_UNRELIABLE = 0.7
"""k̂ above this: importance-weighted estimates are unreliable for that datum (Vehtari et al.)."""


def stderr_of_mean(values: Tensor) -> float | None:
    """The standard error of the mean over data of per-datum values: std / √N, the spread of
    the data and of the estimator's own noise together (None for a single datum)."""
    n = values.shape[0]
    return (values.double().std() / math.sqrt(n)).item() if n > 1 else None


def _pm(mean: float, se: float | None, digits: int = 4) -> str:
    """``mean ± se``, or the mean alone when there is no SE."""
    text = f"{mean:.{digits}f}"
    return text if se is None or not math.isfinite(se) else f"{text} ± {se:.{digits}f}"


def format_table(rows: Sequence[tuple[str, str]]) -> str:
    """Name / value rows, the names padded to one width."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@dataclass(frozen=True)
class ELBOEvaluation:
    """The ELBO of a model/guide pair on some data: per datum, its mean over the data with the
    standard error of that mean, and the terms that add up to it where they exist.

    ``per_datum`` holds one unbiased estimate of ELBO(x_n) per datum (float64); its spread is
    the data's and the estimator's together, and :attr:`elbo_se` is its std / √N. The terms
    (``reconstruction``, ``prior``, ``per_step_loss``; ``diffusion`` for a continuous-time
    model's bound, at T = ∞ or at ``bound_steps`` = T; ``latent``, KL(q(z | x) ‖ p(z)), for a
    model with a latent z) are means over the data, in nats. :meth:`to_dict` is the record
    ``fit`` writes to ``metrics.jsonl``.
    """

    elbo: float
    elbo_se: float | None
    estimator: str
    per_datum: Tensor = field(repr=False, compare=False)
    bits_per_dim: float | None = None
    reconstruction: float | None = None
    prior: float | None = None
    diffusion: float | None = None
    per_step_loss: list[float] | None = None
    latent: float | None = None
    bound_steps: int | None = None
    """T of a continuous-time model's bound (None: T = ∞)."""

    def to_dict(self) -> dict[str, Any]:
        """The means as plain numbers, under the keys of an evaluation record (a term this
        estimator has no split for is left out, as the records have always done)."""
        out: dict[str, Any] = {"elbo": self.elbo, "reconstruction": self.reconstruction}
        if self.estimator == "continuous":
            out["diffusion"] = self.diffusion
            out["prior"] = self.prior
            # keys of the adaptive guide's records only: older records stay as they were
            if self.latent is not None:
                out["latent"] = self.latent
            if self.bound_steps is not None:
                out["bound_steps"] = self.bound_steps
        else:
            out["prior"] = self.prior
            out["per_step_loss"] = self.per_step_loss
        out.update(elbo_se=self.elbo_se, estimator=self.estimator, bits_per_dim=self.bits_per_dim)
        return out

    def rows(self) -> list[tuple[str, str]]:
        """The table rows of the ELBO and of where it is paid."""
        rows = [("ELBO", f"{_pm(self.elbo, self.elbo_se)} nats/datum")]
        if self.bits_per_dim is not None:
            rows.append(("bits/dim", f"{self.bits_per_dim:.4f}"))
        if self.reconstruction is not None:
            given = "z0" if self.estimator == "continuous" else "x1"
            rows.append((f"reconstruction log p(x0|{given})", f"{self.reconstruction:.4f} nats"))
        per_step = self.per_step_loss or []
        if per_step:
            rows.append(("sum of L_t, t = 2..T", f"{sum(per_step[1:]):.4f} nats"))
            worst = max(range(len(per_step)), key=lambda i: per_step[i])
            rows.append(("largest per-step loss", f"{per_step[worst]:.4f} nats at t = {worst + 1}"))
            # where the bound is paid: the small-noise end against the second half of the chain;
            # a share of −ELBO only where every term is a loss ≥ 0 (quantised data: the decoder
            # gives a mass), not where the reconstruction is a density that may exceed 1
            T, bound = len(per_step), -self.elbo
            if T > 10 and bound > 0 and self.bits_per_dim is not None:
                rows.append(("-ELBO share at t <= 10", f"{100 * sum(per_step[:10]) / bound:.1f} %"))
            if T > 1:
                rows.append((f"-ELBO at t > {T // 2}", f"{sum(per_step[T // 2 :]):.4f} nats"))
        if self.prior is not None:
            rows.append(("prior KL L_T", f"{self.prior:.4g} nats"))
        if self.diffusion is not None:
            at = "∞" if self.bound_steps is None else str(self.bound_steps)
            rows.append((f"diffusion loss (T = {at})", f"{self.diffusion:.4f} nats"))
        if self.latent is not None:
            rows.append(("latent KL(q(z|x) || p(z))", f"{self.latent:.4f} nats"))
        return rows


@dataclass(frozen=True)
class DataGap:
    """log p_data(x) − ELBO(x) on data whose density is known: how far the bound is from the
    best any model could do on these data, in nats per datum.

    ``gap_se`` is the standard error of the mean of the per-datum differences (a paired
    comparison: log p_data and the ELBO share the spread of the data, which cancels in the
    difference; two separate SEs combined would count it twice).
    """

    log_p: float
    """the mean of the exact log p_data over the data."""
    log_p_se: float | None
    gap: float
    gap_se: float | None

    @classmethod
    def paired(cls, log_p: Tensor, elbo: Tensor) -> DataGap:
        """From per-datum log p_data(x_n) and per-datum ELBO estimates, in the same order."""
        log_p, elbo = log_p.double().reshape(-1), elbo.double().reshape(-1)
        diff = log_p - elbo
        return cls(
            log_p.mean().item(), stderr_of_mean(log_p), diff.mean().item(), stderr_of_mean(diff)
        )

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("log p_data (exact density)", f"{_pm(self.log_p, self.log_p_se)} nats/datum"),
            (
                "gap log p_data - ELBO",
                f"{_pm(self.gap, self.gap_se)} nats/datum (SE of the per-datum differences)",
            ),
        ]


@dataclass(frozen=True)
class ImportanceBound:
    """IWAE-K: the mean over the data of the importance-weighted bound, with its SE."""

    num_samples: int
    mean: float
    stderr: float
    bits_per_dim: float | None = None


@dataclass(frozen=True)
class PSISSummary:
    """PSIS k̂ over the data it was fitted on (infinite k̂, a tail that could not be fitted,
    left out of the mean and the maximum, counted above :data:`KHAT_UNRELIABLE`)."""

    num_data: int
    num_samples: int
    khat_mean: float | None
    khat_max: float | None
    fraction_unreliable: float

    @classmethod
    def of(cls, khat: Tensor, num_samples: int) -> PSISSummary:
        finite = khat[khat.isfinite()]
        return cls(
            num_data=int(khat.numel()),
            num_samples=int(num_samples),
            khat_mean=float(finite.mean()) if finite.numel() else None,
            khat_max=float(finite.max()) if finite.numel() else None,
            fraction_unreliable=float((khat > KHAT_UNRELIABLE).double().mean()),
        )


@dataclass(frozen=True)
class EvaluationReport:
    """One evaluation of a model on some data: the ELBO and its terms, the gap to the data's
    exact log density where it is known, IWAE-K and PSIS k̂ where asked for.

    ``run``, ``step``, ``split`` and ``ema`` say what was evaluated (None outside a run
    folder). ``seed`` is the evaluation noise's; ``training_seed`` the one ``fit`` evaluates
    the run with, and ``same_noise_as_training`` whether this evaluation drew exactly the
    noise of training's own evaluation of the split at this step (then, with the same
    parameters, it prints training's numbers; None when training made no such evaluation).
    """

    num_data: int
    seed: int
    elbo: ELBOEvaluation
    data_gap: DataGap | None = None
    iwae: ImportanceBound | None = None
    psis: PSISSummary | None = None
    discretized_at: int | None = None
    """T of the chain IWAE and k̂ read a continuous-time model as."""
    iwae_note: str | None = None
    """Why IWAE was asked for and not computed (one line), else None."""
    psis_note: str | None = None
    """Why PSIS k̂ was asked for and not computed (one line), else None."""
    run: str | None = None
    step: int | None = None
    split: str | None = None
    ema: bool | None = None
    training_seed: int | None = None
    same_noise_as_training: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """``evaluation.json``: the identity, the ELBO record's keys, then the extras."""
        out: dict[str, Any] = {}
        for key in ("run", "step", "split"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["num_data"] = self.num_data
        if self.ema is not None:
            out["ema"] = self.ema
        out["seed"] = self.seed
        out.update(self.elbo.to_dict())
        if self.data_gap is not None:
            gap = self.data_gap
            out.update(
                log_p_data=gap.log_p,
                log_p_data_se=gap.log_p_se,
                gap_to_data=gap.gap,
                gap_to_data_se=gap.gap_se,
            )
        if self.discretized_at is not None:
            out["discretized_at"] = self.discretized_at
        if self.iwae is not None:
            out.update(
                iwae_k=self.iwae.num_samples,
                iwae=self.iwae.mean,
                iwae_se=self.iwae.stderr,
                iwae_bits_per_dim=self.iwae.bits_per_dim,
            )
        for key in ("iwae_note", "psis_note"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.psis is not None:
            out.update(
                psis_num_data=self.psis.num_data,
                psis_num_samples=self.psis.num_samples,
                psis_khat_mean=self.psis.khat_mean,
                psis_khat_max=self.psis.khat_max,
            )
            out["psis_frac_above_0.7"] = self.psis.fraction_unreliable
        return out

    def _noise_row(self) -> tuple[str, str]:
        if self.same_noise_as_training:
            text = f"{self.seed}, as training's own evaluation of this split: the same noise"
        elif self.same_noise_as_training is False and self.training_seed is not None:
            if self.seed == self.training_seed:
                # the seed is training's, but a subset or other settings draw other noise
                why = "not training's evaluation of the whole split"
            else:
                why = f"training evaluates whole splits with seed {self.training_seed}"
            text = f"{self.seed}: new evaluation noise ({why}), which moves the ELBO within its SE"
        else:
            text = str(self.seed)
        return ("evaluation seed", text)

    def table(self) -> str:
        """The text ``pyrodiff evaluate`` prints."""
        rows: list[tuple[str, str]] = []
        if self.run is not None:
            rows.append(("run", self.run))
        if self.step is not None:
            rows.append(("step", str(self.step)))
        data = f"{self.num_data} data"
        rows.append(("split", f"{self.split} ({data})") if self.split else ("data", data))
        if self.ema is not None:
            rows.append(("parameters", "EMA" if self.ema else "raw"))
        rows.append(self._noise_row())
        elbo_rows = self.elbo.rows()
        rows.append(elbo_rows[0])
        if self.data_gap is not None:
            rows.extend(self.data_gap.rows())
        rows.extend(elbo_rows[1:])
        at = f" (at T = {self.discretized_at})" if self.discretized_at else ""
        if self.iwae is not None:
            k = self.iwae.num_samples
            rows.append((f"IWAE-{k}{at}", f"{_pm(self.iwae.mean, self.iwae.stderr)} nats/datum"))
            if self.iwae.bits_per_dim is not None:
                rows.append((f"IWAE-{k} bits/dim", f"{self.iwae.bits_per_dim:.4f}"))
        if self.iwae_note is not None:
            rows.append(("IWAE", self.iwae_note))
        if self.psis_note is not None:
            rows.append(("PSIS k-hat", self.psis_note))
        if self.psis is not None and self.psis.khat_mean is not None:
            p = self.psis
            rows.append(
                (
                    f"PSIS k-hat{at} (first {p.num_data} data, {p.num_samples} draws)",
                    f"mean {p.khat_mean:.3f}, max {p.khat_max:.3f}, "
                    f"{100 * p.fraction_unreliable:.0f}% of data above {KHAT_UNRELIABLE}",
                )
            )
        return format_table(rows)


# --- several runs side by side ------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run's numbers from its ``metrics.jsonl``: the last training record (one batch's
    timestep-sampled estimate: noisy, and it can lie above −H), the last and the best
    validation ELBO (choose on these), the test figures the run reports (read once, at its
    end), and −H, the data's negative entropy, where the density is known (the ELBO's
    expectation cannot exceed it)."""

    label: str
    updates: int | None = None
    last_batch_elbo: float | None = None
    validation: float | None = None
    validation_se: float | None = None
    best_validation: float | None = None
    best_validation_step: int | None = None
    test: float | None = None
    test_se: float | None = None
    test_bits_per_dim: float | None = None
    neg_entropy: float | None = None
    neg_entropy_se: float | None = None

    @classmethod
    def of(cls, label: str, history, density=None) -> RunSummary:
        """From a :class:`~pyrodiff.train.History` and, optionally, the data's density."""
        train = history.train[-1] if history.train else None
        val = [r for r in history.evals if r.get("split") == "validation"]
        best = max(val, key=lambda r: r["elbo"]) if val else None
        test = history.final_eval_on("test")
        return cls(
            label=label,
            updates=train["step"] if train else None,
            last_batch_elbo=train["elbo_per_datum"] if train else None,
            validation=val[-1]["elbo"] if val else None,
            validation_se=val[-1].get("elbo_se") if val else None,
            best_validation=best["elbo"] if best else None,
            best_validation_step=best["step"] if best else None,
            test=test["elbo"] if test else None,
            test_se=test.get("elbo_se") if test else None,
            test_bits_per_dim=test.get("bits_per_dim") if test else None,
            neg_entropy=-float(density.entropy) if density is not None else None,
            neg_entropy_se=float(density.entropy_se) if density is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ComparisonReport:
    """Several runs side by side, one :class:`RunSummary` each."""

    runs: tuple[RunSummary, ...]

    @classmethod
    def of(cls, histories: Mapping[str, Any], densities: Mapping[str, Any] | None = None):
        densities = densities or {}
        return cls(tuple(RunSummary.of(k, h, densities.get(k)) for k, h in histories.items()))

    @property
    def entropy(self) -> float | None:
        """H of the data, when every run's data has the same known density (one reference
        line for a figure of them all); None otherwise."""
        values = {r.neg_entropy for r in self.runs}
        if len(values) != 1 or None in values:
            return None
        return -values.pop()

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs]}

    def table(self) -> str:
        """One row per run; the −H column only when some run's data density is known."""
        with_h = any(r.neg_entropy is not None for r in self.runs)
        header = [
            "run",
            "updates",
            "last batch ELBO (noisy)",
            "validation ELBO",
            "best validation (update)",
            "test ELBO",
            "test bits/dim",
        ] + (["-H (data)"] if with_h else [])

        def num(value: float | None, se: float | None = None) -> str:
            return "-" if value is None else _pm(value, se)

        rows = [header]
        for r in self.runs:
            best = (
                f"{r.best_validation:.4f} ({r.best_validation_step})"
                if r.best_validation is not None
                else "-"
            )
            row = [
                r.label,
                "-" if r.updates is None else str(r.updates),
                num(r.last_batch_elbo),
                num(r.validation, r.validation_se),
                best,
                num(r.test, r.test_se),
                num(r.test_bits_per_dim),
            ]
            if with_h:
                row.append(num(r.neg_entropy, r.neg_entropy_se))
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )
