"""Digits with the fixed forward-chain guide: train, then report test bits/dim.

    python examples/digits.py             # the command line's default run (minutes)
    python examples/digits.py --quick     # seconds (what the tests run)

The bound is on the original 17 grey levels (a discretised Gaussian decoder), so bits/dim
here are comparable with an independent per-pixel categorical model's 2.37 on the same test
split (computed exactly by ``examples/study_digits.py``; see docs/study.md).
This is ``pyrodiff train`` written out in Python: the same RunConfig, the same build().
"""

from __future__ import annotations

import argparse

import torch
from _outputs import add_output_arguments, outputs

from pyrodiff.config import RunConfig, build
from pyrodiff.infer import bits_per_dim, elbo_terms
from pyrodiff.plots import plot_samples, plot_step_terms, save_figure
from pyrodiff.sampling import strided_sample
from pyrodiff.train import fit


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--updates", type=int, default=None, help="optimizer updates")
    add_output_arguments(parser, "digits")
    args = parser.parse_args(argv)
    out = outputs(args, "digits")
    # one thread: the small U-Net gains little from more, and threads sharing busy cores wait
    torch.set_num_threads(1)

    config = RunConfig()  # the defaults are the digits run
    if args.quick:
        config = config.replace(num_steps=10, width=8, updates=4, batch_size=32)
    if args.updates is not None:
        config = config.replace(updates=args.updates)  # the warm-up follows the run's length
    model, guide, digits, loss = build(config)
    test = digits.test
    # validation during training; the test split once, at the end
    history = fit(model, guide, digits, loss=loss, **config.fit_options(), progress=not args.quick)
    final = history.final_eval_on("test")  # EMA parameters, every one of the T terms
    print(f"test ELBO      {final['elbo']:.3f} nats/datum")
    print(
        f"test bits/dim  {final['bits_per_dim']:.4f}  (T = {config.num_steps}, {config.updates} updates)"
    )

    # the same number from the Python API directly, with the raw (not averaged) parameters
    x = test.to(next(model.parameters()))
    with torch.no_grad():
        raw = elbo_terms(model, guide, x, generator=torch.Generator().manual_seed(0))
    print(f"raw-parameter bits/dim {float(bits_per_dim(raw.elbo.mean(), digits.num_dims)):.4f}")

    samples = strided_sample(model, 64, max(1, config.num_steps // 10),
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    save_figure(
        plot_samples(samples, num_levels=digits.num_levels), out.figure("digits_samples.png")
    )
    save_figure(plot_step_terms(final), out.figure("digits_step_terms.png"))
    print(f"figures in {out.figures}")
    return {"final": final, "raw": raw, "samples": samples, "num_dims": digits.num_dims}


if __name__ == "__main__":
    main()
