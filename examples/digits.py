"""Digits with the fixed forward-chain guide: train, then report test bits/dim.

    python examples/digits.py             # the command line's default run (minutes)
    python examples/digits.py --quick     # seconds (what the tests run)

The bound is on the original 17 grey levels (a discretised Gaussian decoder), so bits/dim
here are comparable with an independent per-pixel categorical model's 2.36 (see DESIGN.md).
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
    parser.add_argument("--steps", type=int, default=None, help="optimizer updates")
    add_output_arguments(parser, "digits")
    args = parser.parse_args(argv)
    out = outputs(args, "digits")

    config = RunConfig()  # the defaults are the digits run
    if args.quick:
        config = config.replace(num_steps=10, width=8, steps=4, warmup_steps=1, batch_size=32)
    if args.steps is not None:
        config = config.replace(
            steps=args.steps, warmup_steps=min(config.warmup_steps, args.steps - 1)
        )
    model, guide, digits, loss = build(config)
    # --quick evaluates on the first 64 test images only; otherwise the whole test split
    test = digits.test[:64] if args.quick else digits.test
    history = fit(
        model,
        guide,
        digits,
        loss=loss,
        **config.fit_options(),
        eval_data=test,
        progress=not args.quick,
    )
    final = history.final_eval  # EMA parameters, the test images, every one of the T terms
    print(f"test ELBO      {final['elbo']:.3f} nats/datum")
    print(
        f"test bits/dim  {final['bits_per_dim']:.4f}  (T = {config.num_steps}, {config.steps} steps)"
    )

    # the same number from the Python API directly, with the raw (not averaged) parameters
    x = test.to(next(model.parameters()))
    with torch.no_grad():
        raw = elbo_terms(model, guide, x, generator=torch.Generator().manual_seed(0))
    print(f"raw-parameter bits/dim {float(bits_per_dim(raw.elbo.mean(), digits.num_dims)):.4f}")

    samples = strided_sample(model, 64, max(1, config.num_steps // 10),
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    save_figure(plot_samples(samples), out.figure("digits_samples.png"))
    save_figure(plot_step_terms(final), out.figure("digits_step_terms.png"))
    print(f"figures in {out.figures}")
    return {"final": final, "raw": raw, "samples": samples, "num_dims": digits.num_dims}


if __name__ == "__main__":
    main()
