"""FSDP2 refuses 0-dim parameters; crrelu-llm keeps the epsilons whole and averages their gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import crrelu_llm
from crrelu_llm.ops.distributed import fsdp2_share_activation_parameters
from crrelu_llm.patching.tiny import tiny_causal_lm

WORKER = Path(__file__).with_name("fsdp2_epsilon_worker.py")


def _torchrun(tmp_path, mode):
    out = tmp_path / f"{mode}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(WORKER), str(out), mode]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fsdp2_refuses_the_0_dim_epsilon_unless_it_is_shared(tmp_path):
    plain = _torchrun(tmp_path, "plain")
    assert "scalar parameters" in plain["error"]
    shared = _torchrun(tmp_path, "share")
    first, second = shared["ranks"]
    assert first == second  # ranks saw different data, yet hold the same epsilons
    assert all(v != pytest.approx(0.01) for v in first)


def test_plugin_gets_the_crrelu_modules_added_to_its_ignored_modules():
    model = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(model)
    plugin = SimpleNamespace(fsdp_version=2, ignored_modules="lm_head")
    added = fsdp2_share_activation_parameters(plugin, model)
    assert len(added) == 2 and plugin.ignored_modules[0] is model.lm_head
    assert all(isinstance(m, crrelu_llm.CRReLU) for m in plugin.ignored_modules[1:])
    fsdp1 = SimpleNamespace(fsdp_version=1, ignored_modules=None)
    assert fsdp2_share_activation_parameters(fsdp1, model) == [] and fsdp1.ignored_modules is None


def test_trainer_shares_policy_and_reference_epsilons_before_the_reference_is_sharded():
    """TRL's DPOTrainer shards the reference right after Trainer.__init__ creates the
    accelerator, so the epsilons of both models must be in ignored_modules by then, on the
    accelerator's device; only the policy's get the gradient-averaging hook."""
    import copy

    import torch

    from crrelu_llm.training.mixins import ActivationParameterMixin

    policy = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(policy)
    reference = copy.deepcopy(policy).requires_grad_(False)
    plugin = SimpleNamespace(fsdp_version=2, ignored_modules=None)
    seen = {}

    class TrainerOrder:  # what Trainer.__init__ then DPOTrainer.__init__ do, in this order
        def __init__(self, model=None, ref_model=None):
            self.model = model
            self.create_accelerator_and_postprocess()
            seen["ignored when the reference is sharded"] = list(plugin.ignored_modules or [])

        def create_accelerator_and_postprocess(self):
            self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), device=torch.device("meta"))

    type("T", (ActivationParameterMixin, TrainerOrder), {})(model=policy, ref_model=reference)
    ignored = seen["ignored when the reference is sharded"]
    for model in (policy, reference):
        crrelus = [m for m in model.modules() if isinstance(m, crrelu_llm.CRReLU)]
        assert len(crrelus) == 2 and all(any(m is i for i in ignored) for m in crrelus)
        assert all(m.epsilon.device.type == "meta" for m in crrelus)  # moved to the accelerator's device
    assert len(ignored) == 4
    assert all(getattr(p, "_crrelu_rank_mean_hook", False) for p in crrelu_llm.epsilon_parameters(policy).values())
    assert not any(
        getattr(p, "_crrelu_rank_mean_hook", False) for p in crrelu_llm.epsilon_parameters(reference).values()
    )
