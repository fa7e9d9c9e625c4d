"""The cost of the fast bound inside a user's model: one SVI update with DiffusionPrior against
the bare DiffusionELBO update, on the same model, data and optimizer.

    python benchmarks/prior_step.py --quick     # about a minute on 2 CPU cores
    python benchmarks/prior_step.py

Three updates, timed in interleaved rounds (benchmarks/timing.py):

- ``bare``: ``SVI(model, guide, Adam, DiffusionELBO())``, the pyrodiff pair itself;
- ``prior``: ``SVI(user_model, user_guide, Adam, Trace_ELBO())`` where the user's model observes
  the data through ``pyro.sample("x", DiffusionPrior(model), obs=x)`` in its own plate and the
  user's guide is empty (the same bound per datum, Pyro's tracing around it);
- ``program``: ``SVI(lambda x: model(x), lambda x: guide(x), Adam, DiffusionELBO())``, the pair
  wrapped in plain functions, which DiffusionELBO runs with the chain collapsed.

Each ratio is the median over rounds of (candidate / bare) within a round. Two networks: the
digits U-Net (base 32, batch 128, T = 1000) and the 2-D MLP (batch 256, T = 1000), where a
step is cheap and Pyro's per-update bookkeeping weighs most. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from run import digits_setup, two_d_setup  # noqa: E402
from timing import interleaved  # noqa: E402

import pyrodiff.optim as joint_optim  # noqa: E402
from pyrodiff import DiffusionPrior  # noqa: E402
from pyrodiff.infer import DiffusionELBO  # noqa: E402


def measure(setup, rounds: int, calls: int) -> dict[str, float]:
    model, guide, x = setup.model, setup.guide, setup.x
    pyro.clear_param_store()

    def user_model(x):
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("x", DiffusionPrior(model), obs=x)

    def user_guide(x):
        pass

    bare = SVI(model, guide, joint_optim.Adam({"lr": 1e-4}), DiffusionELBO())
    prior = SVI(user_model, user_guide, joint_optim.Adam({"lr": 1e-4}), Trace_ELBO())
    program = SVI(
        lambda x: model(x), lambda x: guide(x), joint_optim.Adam({"lr": 1e-4}), DiffusionELBO()
    )
    t = interleaved(
        {
            "bare": lambda: bare.step(x),
            "prior": lambda: prior.step(x),
            "program": lambda: program.step(x),
        },
        rounds=rounds,
        calls=calls,
        warmup=2,
        device=x.device,
    )
    return {
        "bare_ms": 1e3 * t.median("bare"),
        "prior_ms": 1e3 * t.median("prior"),
        "program_ms": 1e3 * t.median("program"),
        "prior_ratio": t.ratio("prior", "bare"),
        "program_ratio": t.ratio("program", "bare"),
        "prior_spread": t.spread("prior", "bare"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    rounds = 7 if args.quick else 21
    result: dict = {"threads": 1, "device": str(device)}
    print(f"{'setup':<34}{'bare':>10}{'prior':>10}{'program':>10}{'prior/bare':>12}")
    for name, setup, calls in (
        ("digits U-Net, B=128, T=1000", digits_setup(device), 1),
        ("2-D MLP, B=256, T=1000", two_d_setup(device), 10),
    ):
        r = measure(setup, rounds, calls)
        key = "digits" if "digits" in name else "2d"
        result[key] = r
        print(
            f"{name:<34}{r['bare_ms']:>8.2f}ms{r['prior_ms']:>8.2f}ms{r['program_ms']:>8.2f}ms"
            f"{r['prior_ratio']:>12.3f}"
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
