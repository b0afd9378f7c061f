"""The private parts of TRL and transformers this project overrides or calls, each pinned here.

Where no public hook exists, the project relies on these names and arguments. A release that
moves one fails the test named after it, instead of a training run failing mid-way with a
TypeError. Every use is listed in docs/architecture.md ("Private API").
"""

import inspect

import pytest
import torch
from transformers import PretrainedConfig, PreTrainedModel, Trainer
from trl import DPOTrainer, SFTTrainer

from crrelu_llm.patching.tiny import tiny_causal_lm
from crrelu_llm.training.mixins import PromptTruncationMixin
from crrelu_llm.training.reference_cache import weights_checksum
from crrelu_llm.training.trainers.dpo import CRReLUDPOTrainer
from crrelu_llm.training.trainers.sft import CRReLUSFTTrainer


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trl_prepare_dataset_takes_the_arguments_the_length_accounting_passes_on():
    """PromptTruncationMixin._prepare_dataset tokenizes uncut through TRL's, passing its arguments on."""
    assert parameters(DPOTrainer._prepare_dataset) == ["self", "dataset", "processing_class", "args", "dataset_name"]
    assert parameters(SFTTrainer._prepare_dataset) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "packing",
        "formatting_func",
        "dataset_name",
    ]
    for trainer in (CRReLUDPOTrainer, CRReLUSFTTrainer):
        assert trainer._prepare_dataset is PromptTruncationMixin._prepare_dataset


def test_trl_precompute_ref_logps_is_what_the_shared_cache_wraps():
    assert parameters(DPOTrainer._precompute_ref_logps) == ["self", "dataset", "name", "batch_size"]
    assert "_precompute_ref_logps" in CRReLUDPOTrainer.__dict__


def test_trainer_save_receives_the_consolidated_state_dict():
    """ActivationParameterMixin._save stores ZeRO-3's (1,)-shaped epsilons 0-dim."""
    assert parameters(Trainer._save)[:3] == ["self", "output_dir", "state_dict"]
    assert "self._save(" in inspect.getsource(Trainer.save_model)


def test_trainer_builds_the_accelerator_before_the_reference_is_sharded():
    """The eps are kept whole under FSDP2 and the reference hashed in create_accelerator_and_postprocess,
    which Trainer.__init__ calls once self.model is set."""
    source = inspect.getsource(Trainer.__init__)
    assert source.index("self.model = model") < source.index("self.create_accelerator_and_postprocess()")


def test_transformers_weight_init_hook_takes_the_module_first():
    """record.register_with_transformers wraps _initialize_weights so that an eps missing from a
    checkpoint is initialised rather than left as whatever memory it was given."""
    assert parameters(PreTrainedModel._initialize_weights.__wrapped__)[:2] == ["self", "module"]
    assert parameters(PreTrainedModel.post_init.__wrapped__) == ["self"]


def test_transformers_reads_a_config_file_through_one_classmethod():
    """The guarded model type (crrelu-<type>) is mapped back in _dict_from_json_file."""
    assert isinstance(inspect.getattr_static(PretrainedConfig, "_dict_from_json_file"), classmethod)
    assert parameters(PretrainedConfig._dict_from_json_file) == ["json_file"]


def test_the_reference_checksum_is_the_digest_trl_keeps():
    """Shared reference log-probabilities keep their keys whichever TRL computed them."""
    utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(utils, "hash_module"):
        pytest.skip("this TRL has no hash_module (before 1.15): the project's own checksum is the only one")
    model = tiny_causal_lm("gpt2")
    assert weights_checksum(model) == utils.hash_module(model)
    model = model.to(torch.bfloat16)
    assert weights_checksum(model) == utils.hash_module(model)


def test_deepspeed_can_step_outside_its_zero_init_context():
    """ops.distributed.outside_zero3_init builds a user's activation class outside zero.Init."""
    partition_parameters = pytest.importorskip("deepspeed.runtime.zero.partition_parameters")
    assert hasattr(partition_parameters, "top_level_context")
    for name in ("shutdown_init_context", "restore_init_context"):
        assert parameters(getattr(partition_parameters, name)) == []


def test_deepspeed_comm_says_whether_it_made_groups_and_destroys_them():
    """training.process_group.leave_process_group calls DeepSpeed's own destroy when its comm
    module is initialised (it also drops DeepSpeed's references to the groups it made)."""
    comm = pytest.importorskip("deepspeed.comm.comm")
    assert parameters(comm.is_initialized) == []
    assert parameters(comm.destroy_process_group) == ["group"]


def test_deepspeed_zero3_keeps_its_models_where_the_run_end_clears_them():
    """training.process_group.release_zero3_models empties parameter_offload's FWD_MODULE_STACK
    and the lru_cache on PartitionedParameterCoordinator's methods (found through DeepSpeed's
    instrument_w_nvtx wrapper): if either moves, ZeRO-3 runs end with their groups alive again."""
    offload = pytest.importorskip("deepspeed.runtime.zero.parameter_offload")
    coordinator = pytest.importorskip("deepspeed.runtime.zero.partitioned_param_coordinator")
    from crrelu_llm.training.process_group import method_caches

    assert isinstance(offload.FWD_MODULE_STACK, list)
    assert len(method_caches(coordinator.PartitionedParameterCoordinator)) >= 1


def test_trainer_save_model_can_save_without_pushing():
    """training/train.py saves with ``_internal_call=True`` so that the push comes after the card."""
    assert "_internal_call" in parameters(Trainer.save_model)


def test_lm_eval_asks_git_through_the_function_the_benchmark_replaces():
    """evaluation/benchmark.quiet_git_hash replaces lm-eval's ``get_git_commit_hash`` where the evaluator calls it."""
    import lm_eval.evaluator

    assert callable(lm_eval.evaluator.get_git_commit_hash)
    assert "get_git_commit_hash()" in inspect.getsource(lm_eval.evaluator.simple_evaluate)
