"""TRL's trainers with the CRReLU epsilons looked after, and the callbacks a run uses.

:class:`CRReLUDPOTrainer` and :class:`CRReLUSFTTrainer` are TRL's ``DPOTrainer`` and
``SFTTrainer`` with :class:`ActivationParameterMixin`: the epsilons (every patched activation's
parameters) get their own optimizer parameter group (``args.activation_learning_rate``, no
weight decay; built by overriding ``create_optimizer``, so it also holds under DeepSpeed and
FSDP), their values are logged with the other metrics (``epsilon/<layer>``, ``beta/<layer>``...,
mean, min, max, so they reach ``trainer_state.json``
and every ``report_to``), FSDP2 keeps them whole (:mod:`crrelu_llm.ops.distributed`), and
checkpoints hold them 0-dim. Pass a :class:`~crrelu_llm.training.config.CRReLUDPOConfig` (or SFT) as
``args``; a plain TRL config trains eps at ``learning_rate``.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import DPOTrainer, SFTTrainer

from crrelu_llm import run_files
from crrelu_llm.data import accounting
from crrelu_llm.data.accounting import truncate_like_reference
from crrelu_llm.files import write_json
from crrelu_llm.ops.distributed import fsdp2_share_activation_parameters, full_parameter
from crrelu_llm.ops.scalars import as_saved
from crrelu_llm.patching.patch import activation_logs, activation_parameters, active_activation_parameters
from crrelu_llm.training.reference_cache import weights_checksum

logger = logging.getLogger("crrelu_llm.trainer")


class ActivationParameterMixin:
    """Own optimizer group for the activation parameters (CRReLU's eps, a Swish's beta, any class's),
    and their values in the logs."""

    def __init__(self, *args, data_source: str = "", **kwargs):
        self._crrelu_reference = kwargs.get("ref_model")
        self.data_source = data_source  # names the data in the length rule's messages
        super().__init__(*args, **kwargs)

    def create_accelerator_and_postprocess(self):
        # Runs inside Trainer.__init__, once the accelerator (and its FSDP plugin) exists and
        # before anything is sharded: TRL shards the DPO reference right after Trainer.__init__.
        super().create_accelerator_and_postprocess()
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        shared = []
        for model in (self.model, self._crrelu_reference):
            shared += fsdp2_share_activation_parameters(plugin, model, self.accelerator.device)
        if shared:
            logger.info("FSDP2: %d CRReLU epsilons kept unsharded on %s, gradients averaged over ranks",
                        len(shared), self.accelerator.device)
        args = getattr(self, "args", None)
        if getattr(args, "ref_logps_cache_dir", None) and getattr(args, "precompute_ref_log_probs", False):
            # the key of shared reference log-probabilities, hashed before anything is sharded
            self.reference_checksum = weights_checksum(self._crrelu_reference or self.model)

    def create_optimizer(self, *args, **kwargs):  # transformers 5.x added a `model` argument along the way
        optimizer = super().create_optimizer(*args, **kwargs)
        if getattr(self, "_epsilon_group_built", False):
            return optimizer
        self._epsilon_group_built = True
        eps = [p for p in active_activation_parameters(self.model).values() if p.requires_grad]
        if not eps:
            return optimizer
        ids = {id(p) for p in eps}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        lr = getattr(self.args, "activation_learning_rate", None)
        lr = self.args.learning_rate if lr is None else lr
        optimizer.add_param_group({"params": eps, "lr": lr, "weight_decay": 0.0, "name": "activation_parameters"})
        logger.info("activation parameter group: %d parameters, lr %g, no weight decay", len(eps), lr)
        return optimizer

    def log(self, logs: dict, *args, **kwargs):
        logs.update(activation_logs(self.model))
        return super().log(logs, *args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        # A ZeRO-3 consolidated state dict is built from the parameters themselves, where the
        # epsilons are (1,)-shaped (see CRReLU): store them 0-dim like every other checkpoint.
        if state_dict:
            state_dict = as_saved(state_dict, activation_parameters(self.model))
        return super()._save(output_dir, state_dict=state_dict)


class PromptTruncationMixin:
    """TRL tokenizes every split without a length limit; then the length rule is applied here and
    what it does is counted (:mod:`crrelu_llm.data.accounting`, kept in ``self.data_accounting`` per
    split): TRL's rule, or with ``args.max_prompt_length`` the DPO reference code's
    (:func:`crrelu_llm.data.accounting.truncate_like_reference`), so a long HH conversation keeps its last
    turns instead of being dropped or losing its response. A split the rule empties is refused."""

    lengths = staticmethod(accounting.dpo_lengths)
    unit = "pair"

    def _prepare_dataset(self, dataset, processing_class, args, *rest):
        name, packing = rest[-1], bool(rest[0]) if len(rest) > 1 else False
        if packing or not hasattr(dataset, "__len__"):  # packed or streamed: nothing is dropped or cut per row
            return super()._prepare_dataset(dataset, processing_class, args, *rest)
        rows = len(dataset)
        uncut = copy.copy(args)
        uncut.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, uncut, *rest)
        measured = dataset.map(self.lengths, remove_columns=dataset.column_names, desc=f"Measuring {name} lengths")
        lengths = [{"prompt": p, "response": r} for p, r in zip(measured["prompt"], measured["response"])]
        limit = getattr(args, "max_prompt_length", None)
        counts = accounting.account(lengths, rows, name, self.unit, max_length=args.max_length,
                                    max_prompt_length=limit, truncation_mode=args.truncation_mode)
        if not hasattr(self, "data_accounting"):
            self.data_accounting = {}
        self.data_accounting[name] = counts
        # a partial batch trains unless the dataloader drops it
        batch = args.per_device_train_batch_size if name == "train" and args.dataloader_drop_last else 1
        accounting.check(counts, name, batch, getattr(self, "data_source", ""))
        if limit:
            kwargs = {"max_length": args.max_length, "max_prompt_length": limit, "mode": args.prompt_truncation_mode}
            return dataset.map(self._truncate_example, fn_kwargs=kwargs, desc=f"Truncating prompts to {limit} "
                               f"tokens ({args.prompt_truncation_mode}) within {args.max_length}")
        return self._length_rule(dataset, args) if args.max_length is not None else dataset


class CRReLUDPOTrainer(ActivationParameterMixin, PromptTruncationMixin, DPOTrainer):
    """TRL's ``DPOTrainer`` with the CRReLU epsilons looked after (see the module docstring), and
    precomputed reference log-probabilities shared through ``args.ref_logps_cache_dir``
    (:mod:`crrelu_llm.training.reference_cache`): TRL computes them, this keeps them for the next run.

    Example::

        >>> from crrelu_llm import patch_model
        >>> from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
        >>> from crrelu_llm.training.config import CRReLUDPOConfig
        >>> from datasets import Dataset
        >>> model = tiny_causal_lm("gpt2")
        >>> _ = patch_model(model, "crrelu")
        >>> pairs = Dataset.from_list([{"prompt": "1+1=", "chosen": "2.", "rejected": "3."}] * 4)
        >>> args = CRReLUDPOConfig(output_dir="runs/doc", max_steps=1, per_device_train_batch_size=2,
        ...                        activation_learning_rate=1e-2, report_to=[], use_cpu=True)
        >>> trainer = CRReLUDPOTrainer(model=model, args=args, train_dataset=pairs,
        ...                            processing_class=tiny_tokenizer())  # doctest: +SKIP
        >>> trainer.train()  # eps trains in its own parameter group  # doctest: +SKIP
    """

    def _precompute_ref_logps(self, dataset, name, batch_size):
        from crrelu_llm.training.reference_cache import cached_reference_logps

        folder = getattr(self.args, "ref_logps_cache_dir", None)
        compute = super()._precompute_ref_logps
        if not folder:
            return compute(dataset, name, batch_size)
        return cached_reference_logps(Path(folder), dataset, name, self.reference_checksum, self.args,
                                      lambda: compute(dataset, name, batch_size), self.accelerator)

    @staticmethod
    def _length_rule(dataset, args):
        """TRL's: with ``keep_start``, drop the pairs whose prompt alone fills ``max_length`` (the
        collator then cuts the rest); pinned against TRL's own in tests/test_accounting.py."""
        if args.truncation_mode != "keep_start":
            return dataset
        return dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length,
                              desc="Dropping pairs whose prompt fills max_length")

    @staticmethod
    def _truncate_example(example, **kwargs):
        prompt, (chosen, rejected) = truncate_like_reference(
            example["prompt_ids"], [example["chosen_ids"], example["rejected_ids"]], **kwargs)
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


class CRReLUSFTTrainer(ActivationParameterMixin, PromptTruncationMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with the CRReLU epsilons looked after (see the module docstring)."""

    lengths = staticmethod(accounting.sft_lengths)
    unit = "row"

    @staticmethod
    def _length_rule(dataset, args):
        """TRL's: cut every sequence to ``max_length`` (its start kept with ``keep_start``), then drop
        the rows left with no scored token; pinned against TRL's own in tests/test_accounting.py."""
        cut = slice(None, args.max_length) if args.truncation_mode == "keep_start" else slice(-args.max_length, None)
        masks = [c for c in ("labels", "completion_mask") if c in dataset.column_names]

        def truncate(example):
            return {"input_ids": example["input_ids"][cut], **{c: example[c][cut] for c in masks}}

        def scored(example):
            if "labels" in example:
                return any(label != -100 for label in example["labels"])
            return any(example["completion_mask"]) if "completion_mask" in example else bool(example["input_ids"])

        dataset = dataset.map(truncate, desc=f"Truncating to {args.max_length} tokens")
        return dataset.filter(scored, desc="Dropping rows left without a scored token")

    @staticmethod
    def _truncate_example(example, **kwargs):
        ids = example["input_ids"]
        if "labels" in example:  # the prompt is the leading run of ignored (-100) labels
            scored = [label != -100 for label in example["labels"]]
        elif "completion_mask" in example:
            scored = [bool(m) for m in example["completion_mask"]]
        else:  # plain text: no prompt to tell apart
            return {"input_ids": ids[: kwargs["max_length"]]}
        start = scored.index(True) if True in scored else len(ids)
        prompt, (completion,) = truncate_like_reference(ids[:start], [ids[start:]], **kwargs)
        out = {"input_ids": prompt + completion}
        if "labels" in example:
            out["labels"] = [-100] * len(prompt) + example["labels"][start:start + len(completion)]
        if "completion_mask" in example:
            out["completion_mask"] = [0] * len(prompt) + [1] * len(completion)
        return out


class CRReLUDistillTrainer(CRReLUSFTTrainer):
    """Distillation into the patched model: TRL's ``SFTTrainer`` (data, collation, saving,
    resuming) with ``compute_loss`` replaced by the forward KL from the frozen ``teacher`` (the
    original model) to the student on every real (non-padding) token, prompt included, at
    ``args.temperature`` (times T^2, as in Hinton et al.), plus ``args.mlp_mse_weight`` times the
    mean squared error between each MLP's output in the two models. ``distill/kl`` and
    ``distill/mlp_mse`` are logged."""

    def __init__(self, *args, teacher=None, **kwargs):
        if teacher is None:
            raise TypeError("CRReLUDistillTrainer needs teacher= (the original model)")
        super().__init__(*args, **kwargs)
        if not self.args.student_dropout:
            # the teacher runs without dropout; a student trained with it learns to match the teacher
            # only on average over masks, and is measured (and used) without them
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        teacher.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            teacher = prepare_fsdp(teacher, self.accelerator)
        else:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.teacher = teacher
        self._distill_sums = {"distill/kl": 0.0, "distill/mlp_mse": 0.0, "n": 0}

    def _mlp_paths(self) -> list[str]:
        """The feed-forward blocks (parents of the activations), found in the unpatched teacher."""
        if not hasattr(self, "_mlp_path_list"):
            from crrelu_llm.patching.discovery import find_activations

            teacher = getattr(self.teacher, "module", self.teacher)
            self._mlp_path_list = sorted(
                {s.path.rpartition(".")[0] for s in find_activations(teacher) if s.feed_forward and "." in s.path}
            )
        return self._mlp_path_list

    def _mlp_outputs(self, model, store: dict):
        """Forward hooks that keep each feed-forward block's output."""
        root = getattr(model, "module", model)

        def keep(key):
            return lambda mod, inp, out: store.__setitem__(key, out[0] if isinstance(out, tuple) else out)

        return [root.get_submodule(path).register_forward_hook(keep(path)) for path in self._mlp_paths()]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        labels = inputs["labels"]
        feed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        student_mlp, teacher_mlp, handles = {}, {}, []
        if args.mlp_mse_weight > 0:
            handles = self._mlp_outputs(model, student_mlp) + self._mlp_outputs(self.teacher, teacher_mlp)
        try:
            outputs = model(**feed)
            with torch.no_grad():
                teacher_logits = self.teacher(**feed).logits
        finally:
            for handle in handles:
                handle.remove()
        # every real token: the teacher's distribution is a target at prompt positions too
        attention = inputs.get("attention_mask")
        mask = (attention[:, 1:] if attention is not None else (labels[:, 1:] != -100)).float()
        tokens = mask.sum().clamp(min=1)
        t = args.temperature
        student = (outputs.logits[:, :-1].float() / t).log_softmax(-1)
        teacher = (teacher_logits[:, :-1].float() / t).log_softmax(-1)
        kl = (teacher.exp() * (teacher - student)).sum(-1)
        loss = (kl * mask).sum() / tokens * t * t
        mse = torch.zeros((), device=loss.device)
        if student_mlp:
            keep = inputs.get("attention_mask", torch.ones_like(labels)).bool()
            mse = sum(((student_mlp[k].float() - teacher_mlp[k].float())[keep] ** 2).mean() for k in student_mlp)
            mse = mse / len(student_mlp)
            loss = loss + args.mlp_mse_weight * mse
        if model.training:
            self._distill_sums["distill/kl"] += float((kl * mask).sum().detach() / tokens)
            self._distill_sums["distill/mlp_mse"] += float(mse.detach())
            self._distill_sums["n"] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        n = self._distill_sums["n"]
        if n and "loss" in logs:
            logs["distill/kl"] = self._distill_sums["distill/kl"] / n
            if self.args.mlp_mse_weight > 0:
                logs["distill/mlp_mse"] = self._distill_sums["distill/mlp_mse"] / n
            self._distill_sums = {"distill/kl": 0.0, "distill/mlp_mse": 0.0, "n": 0}
        return super().log(logs, *args, **kwargs)


class RankConsistencyCallback(TrainerCallback):
    """At the end of training, compare a checksum of the weights (and the epsilons) across ranks
    and write ``rank_consistency.json``: DDP/FSDP/ZeRO ranks must end identical."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist

        checksum = float(sum(_value_sum(p) for p in model.parameters()))
        mine = {"rank": int(os.environ.get("RANK", "0")), "checksum": checksum, "epsilon": activation_logs(model)}
        everyone = [mine]
        if dist.is_available() and dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        if state.is_world_process_zero:
            identical = all(
                r["checksum"] == everyone[0]["checksum"] and r["epsilon"] == everyone[0]["epsilon"] for r in everyone
            )
            if not identical:
                logger.warning("ranks ended with different weights or epsilons: %s", everyone)
            from accelerate.state import PartialState

            kind = str(PartialState().distributed_type).split(".")[-1]
            write_json(
                self.output_dir / run_files.RANK_CONSISTENCY,
                {"identical": identical, "distributed_type": kind, "ranks": everyone},
            )


def _value_sum(p: torch.Tensor) -> float:
    t = full_parameter(p)
    return float(t.double().sum().item()) if t.numel() else 0.0
