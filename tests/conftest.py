import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import crrelu_llm  # noqa: E402,F401  (registers "crrelu" with transformers)

transformers.logging.set_verbosity_error()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tokens():
    return torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
