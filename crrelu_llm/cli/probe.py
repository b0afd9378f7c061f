"""``crrelu-llm probe MODEL --data DATA``: activation statistics per layer, learned against
least-squares eps. Its parser, handler and printing."""

from __future__ import annotations

from crrelu_llm.cli.common import MODEL_HELP, command_parser, data_kwargs, data_options, positive_int, trust_flag


def register(commands) -> None:
    probe = command_parser(
        commands, "probe", "Activation statistics per layer: input moments, sparsity, learned and least-squares eps."
    )
    probe.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    probe.add_argument(
        "--original",
        default=None,
        help="the model it was patched from (default: the activation class its patch record names)",
    )
    probe.add_argument("--max-samples", type=positive_int, default=200, help="examples to collect activations on")
    data_options(probe)
    trust_flag(probe)


def run(args) -> int:
    from crrelu_llm.evaluation.evaluate import run_probe
    from crrelu_llm.evaluation.results import PROBE

    result = run_probe(
        args.model,
        args.data,
        original=args.original,
        max_samples=args.max_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        **data_kwargs(args),
    )
    _print_probe(result, PROBE.file(args.model, args.out))
    return 0


def _print_probe(result: dict, written) -> None:
    print(
        f"{'layer':>5}  {'mean':>7}  {'sd':>6}  {'skew':>6}  {'ex.kurt':>7}  {'neg':>5}  {'zero':>5}  "
        f"{'|y|<1e-3':>8}  {'eps':>8}  {'eps (LS)':>8}"
    )
    for layer in result["layers"]:  # another class's learned parameters where CRReLU's eps would be
        eps = (
            f"{layer['epsilon']:.4f}"
            if layer["epsilon"] is not None
            else ",".join(f"{k}={v:.4g}" for k, v in layer.get("parameters", {}).items()) or "-"
        )
        ls = f"{layer['least_squares_epsilon']:.4f}" if layer["least_squares_epsilon"] is not None else "-"
        print(
            f"{str(layer['layer']):>5}  {layer['mean']:7.3f}  {layer['sd']:6.3f}  {layer['skewness']:6.2f}  "
            f"{layer['excess_kurtosis']:7.2f}  {layer['share_negative']:5.2f}  {layer['output_zero']:5.2f}  "
            f"{layer['output_small']:8.2f}  {eps:>8}  {ls:>8}"
        )
    print(
        f"over {result['layers'][0]['n'] if result['layers'] else 0} activations per layer of "
        f"{result['data']['eval_rows']} examples -> {written}"
    )
