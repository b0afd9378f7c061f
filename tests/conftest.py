import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))  # helper modules beside the tests (judge_server)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import crrelu_llm  # noqa: E402,F401  (registers "crrelu" with transformers)

from judge_server import judge_servers  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tokens():
    return torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def server():
    """``server(behaviour)`` starts a loopback OpenAI-compatible judge (see judge_server.py)."""
    yield from judge_servers()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = []
    for _ in range(48):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{a + b + 1}!"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The reduced demo (every stage, lm-eval benchmark and probes included), run once for every
    test that reads a finished experiment: ``(folder of its recipe, output directory)``."""
    from helpers import experiment_main, reduced_demo

    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "out"
    assert experiment_main(reduced_demo(tmp, capability=True), str(out)) == 0
    return tmp, out
