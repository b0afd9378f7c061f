"""``crrelu-llm patch MODEL --out DIR``: replace a model's MLP activations and save a checkpoint
that loads back with ``import crrelu_llm``. Its parser, handler and printing."""

from __future__ import annotations

import argparse
from pathlib import Path

from crrelu_llm.cli.common import MODEL_HELP, command_parser, positive_int, trust_flag
from crrelu_llm.errors import UsageError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, epsilon_init_value


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated block indices such as 0,1,-1; got {text!r}"
        ) from None


def _parse_epsilon(text: str) -> float | str:
    try:
        return epsilon_init_value(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(commands) -> None:
    patch = command_parser(
        commands,
        "patch",
        "Replace the MLP activations of a model and save a checkpoint that loads back with `import crrelu_llm`.",
    )
    patch.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    patch.add_argument("--out", required=True, type=Path, help="directory to write the patched checkpoint to")
    patch.add_argument(
        "--activation",
        default="crrelu",
        help="crrelu, swish_beta, relu2, any transformers name (relu, gelu, ...), corrected_<name>, "
        "matched_<name> (measured on --calibration-data), or your class as module:Class",
    )
    patch.add_argument("--activation-kwargs", default=None, help="the class's keyword arguments, as JSON")
    patch.add_argument(
        "--epsilon-init",
        type=_parse_epsilon,
        default=DEFAULT_EPSILON_INIT,
        help="initial CRReLU eps, or calibrate (least squares per layer; needs --calibration-data)",
    )
    patch.add_argument(
        "--calibration-data",
        default=None,
        help="text to calibrate eps (or measure matched_<name>'s mu and sigma) on: preference data "
        "(hub id or local file/directory)",
    )
    patch.add_argument("--calibration-samples", type=positive_int, default=64, help="rows of it to use")
    patch.add_argument(
        "--layers",
        type=_parse_layers,
        default=None,
        help="comma-separated block indices, negative from the end (default: every block)",
    )
    patch.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16 or float16")
    patch.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    trust_flag(patch)


def run(args) -> int:
    from crrelu_llm.patching.checkpoints import patch_checkpoint
    from crrelu_llm.patching.discovery import activation_kwargs_value

    report = patch_checkpoint(
        args.model,
        args.out,
        activation=args.activation,
        epsilon_init=args.epsilon_init,
        layers=args.layers,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        calibration_data=args.calibration_data,
        calibration_samples=args.calibration_samples,
        activation_kwargs=activation_kwargs_value(args.activation_kwargs),
    )
    print(report)
    print(
        f"Saved to {args.out} (load it with AutoModelForCausalLM.from_pretrained after `import crrelu_llm`; "
        "to share it without crrelu-llm: crrelu-llm export)"
    )
    return 0
