"""``crrelu-llm inspect MODEL``: which activation modules a model has and which a patch would
replace (from the config on the meta device: no weights downloaded). Its parser, handler and printing."""

from __future__ import annotations

import json

from crrelu_llm.cli.common import MODEL_HELP, command_parser, trust_flag


def register(commands) -> None:
    inspect = command_parser(
        commands,
        "inspect",
        "List a model's activation modules and which ones a patch would "
        "replace (built from the config on the meta device: no weights are downloaded).",
    )
    inspect.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    trust_flag(inspect)


def run(args) -> int:
    from crrelu_llm.patching.checkpoints import inspect_model

    info = inspect_model(args.model, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sites = info["activations"]
    print(f"{args.model}: {info['model_class']}, {len(sites)} activation module(s)")
    for s in sites:
        print(f"  {'MLP ' if s['feed_forward'] else '--- '} {s['path']}: {s['module_type']} ({s['reason']})")
    print(
        f"{sum(s['feed_forward'] for s in sites)} in feed-forward blocks would be replaced by `crrelu-llm patch` "
        "(marked MLP)."
    )
    if info["patch_record"]:
        print(f"Already patched: {len(info['patch_record']['modules'])} module(s) recorded in config.crrelu_llm_patch.")
    return 0
