"""The README's Python API on this machine: torch's default threads against one, and
``Predictive`` looped against vectorised. Prints one JSON object.

Two measurements, both of the README's own code:

- ``svi``: 200 ``SVI`` steps of the README's 2-D example (``MLPDenoiser(2)``, T = 100,
  ``DiffusionELBO``, ``pyrodiff.optim.Adam``), with torch's default intra-op thread count and
  with one thread, in alternating rounds (the order flipping each round) so that a change in
  the machine's load hits both;
- ``predictive``: ``num_samples`` draws x_0 ~ p_θ(x_0) through ``pyro.infer.Predictive`` on
  the model, looped (``parallel=False``, one run of the program per draw) and vectorised
  (``parallel=True``, one run over a plate of draws), on one thread.

The load averages before and after say how busy the machine was: on a machine whose cores are
taken by other work, extra threads wait for each other, which is why the command line defaults
to one. Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/threads.py          # about a minute when idle
    PYTHONPATH=$PWD python benchmarks/threads.py --quick  # seconds; checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from pyro.infer import SVI, Predictive

import pyrodiff.optim
from pyrodiff import Diffusion, ForwardGuide, linear_schedule
from pyrodiff.infer import DiffusionELBO
from pyrodiff.networks import MLPDenoiser


def _readme_svi(steps: int, seed: int) -> float:
    """Seconds for ``steps`` SVI steps of the README's example, from a fresh model."""
    torch.manual_seed(seed)
    x0 = torch.randn(256, 2) * 0.5 + 1.0
    schedule = linear_schedule(100)
    model, guide = Diffusion(MLPDenoiser(2), schedule), ForwardGuide(schedule)
    svi = SVI(model, guide, pyrodiff.optim.Adam({"lr": 1e-3}), DiffusionELBO())
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(x0)
    return time.perf_counter() - start


def _predictive(num_samples: int, parallel: bool, seed: int) -> tuple[float, tuple[int, ...]]:
    torch.manual_seed(seed)
    model = Diffusion(MLPDenoiser(2), linear_schedule(100))
    predictive = Predictive(model, num_samples=num_samples, parallel=parallel, return_sites=["x_0"])
    start = time.perf_counter()
    with torch.no_grad():
        x0 = predictive(None, 1)["x_0"]
    return time.perf_counter() - start, tuple(x0.shape)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    args = parser.parse_args(argv)
    steps, num_samples, rounds = (10, 20, 1) if args.quick else (200, 500, args.rounds)

    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    svi: dict[str, list[float]] = {"default_threads": [], "one_thread": []}
    cases = [("default_threads", default_threads), ("one_thread", 1)]
    for _, threads in cases:  # first calls pay one-off costs (allocations, lazy imports)
        torch.set_num_threads(threads)
        _readme_svi(5, seed=0)
    for r in range(rounds):
        for name, threads in cases if r % 2 == 0 else cases[::-1]:
            torch.set_num_threads(threads)
            svi[name].append(_readme_svi(steps, seed=r))

    torch.set_num_threads(1)
    _predictive(2, parallel=True, seed=0)
    looped, shape = _predictive(num_samples, parallel=False, seed=0)
    parallel, shape_parallel = _predictive(num_samples, parallel=True, seed=0)
    assert shape == shape_parallel == (num_samples, 1, 2)
    torch.set_num_threads(default_threads)

    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_default_threads": default_threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1_5_15_min_before": [round(v, 2) for v in load_before],
            "load_average_1_5_15_min_after": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "svi": {
            "steps": steps,
            "default_threads_s": [round(v, 2) for v in svi["default_threads"]],
            "one_thread_s": [round(v, 2) for v in svi["one_thread"]],
            "median_default_threads_s": round(statistics.median(svi["default_threads"]), 2),
            "median_one_thread_s": round(statistics.median(svi["one_thread"]), 2),
        },
        "predictive": {
            "num_samples": num_samples,
            "looped_s": round(looped, 3),
            "parallel_s": round(parallel, 3),
            "speed-up": round(looped / parallel, 1),
        },
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
