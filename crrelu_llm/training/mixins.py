"""What every objective's trainer adds to TRL's, and the callback a run uses.

:class:`ActivationParameterMixin`: the activation parameters (CRReLU's eps, a Swish's beta, any
patched class's) get their own optimizer parameter group (``args.activation_learning_rate``, no
weight decay; built by overriding ``create_optimizer``, so it also holds under DeepSpeed and
FSDP), their values are logged with the other metrics (``epsilon/<layer>``, ``beta/<layer>``...,
mean, min, max, so they reach ``trainer_state.json`` and every ``report_to``), FSDP2 keeps them
whole (:mod:`crrelu_llm.ops.distributed`), and checkpoints hold them 0-dim. A plain TRL config
trains them at ``learning_rate``. :class:`PromptTruncationMixin`: the length rule applied and
counted (DPO, SFT). :class:`PolicyReferenceMixin`: no ``ref_model`` means the policy's starting copy
(DPO, KTO). :class:`ProjectCardMixin`: the Hub gets the project's card.
:class:`RankConsistencyCallback`: ranks checked identical at the end. The
trainers themselves, each beside its config, are in :mod:`crrelu_llm.training.trainers`.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from crrelu_llm import run_files
from crrelu_llm.data import accounting
from crrelu_llm.files import write_json, write_text_atomic
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
            logger.info(
                "FSDP2: %d activation parameters kept unsharded on %s, gradients averaged over ranks",
                len(shared),
                self.accelerator.device,
            )
        args = getattr(self, "args", None)
        if getattr(args, "ref_logps_cache_dir", None) and getattr(args, "precompute_ref_log_probs", False):
            # the key of shared reference log-probabilities, hashed before anything is sharded
            self.reference_checksum = weights_checksum(self._crrelu_reference or self.model)

    def create_optimizer(self, *args, **kwargs):  # transformers 5.x added a `model` argument along the way
        optimizer = super().create_optimizer(*args, **kwargs)
        if getattr(self, "_activation_group_built", False):
            return optimizer
        self._activation_group_built = True
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
        # activation parameters are (1,)-shaped (see CRReLU): store them 0-dim like every other checkpoint.
        if state_dict:
            state_dict = as_saved(state_dict, activation_parameters(self.model))
        return super()._save(output_dir, state_dict=state_dict)


class ProjectCardMixin:
    """The model card is the project's: once a run has written its card (``project_card``), the card
    TRL would draft over it when pushing to the Hub is not written, so the Hub gets the folder's."""

    project_card: str | None = None

    def create_model_card(self, *args, **kwargs):
        if self.project_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            write_text_atomic(Path(self.args.output_dir) / run_files.MODEL_CARD, self.project_card)


class PolicyReferenceMixin:
    """The reference the command line uses, on every route: a trainer given no ``ref_model`` takes a
    frozen copy of the policy as it is passed in (its patch and its activation parameters included),
    where TRL would load ``model.config._name_or_path`` again: for a model patched in memory, that is
    the unpatched original. Asking for another reference is explicit: ``ref_model`` as a model, or
    as a hub id or path (``ref_model="gpt2"``: the unpatched original, as the CLI's
    ``reference: original``). With PEFT the reference stays TRL's: the adapter disabled."""

    def __init__(self, model=None, ref_model=None, args=None, *rest, **kwargs):
        if rest:
            raise TypeError(f"{type(self).__name__}: pass the arguments after `args` by keyword")
        ref_model = starting_reference(model, ref_model, args, kwargs.get("peft_config"))
        super().__init__(model=model, ref_model=ref_model, args=args, **kwargs)


def starting_reference(model, ref_model, args, peft_config=None):
    """The reference a trainer gets for ``model`` (see :class:`PolicyReferenceMixin`)."""
    if isinstance(ref_model, (str, Path)):  # asked for by name: loaded as every model here is
        from crrelu_llm.patching.loading import load_causal_lm

        dtype = getattr(model, "dtype", "auto")
        ref = load_causal_lm(str(ref_model), dtype=dtype, trust_remote_code=bool(getattr(args, "trust_remote_code", 0)))
        return ref.eval().requires_grad_(False)
    if ref_model is not None or not isinstance(model, torch.nn.Module) or peft_config is not None:
        return ref_model  # given; or a model TRL loads by name (unpatched, as its reference); or PEFT's
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return None
    from crrelu_llm.runtime import deepspeed_zero3_enabled

    if deepspeed_zero3_enabled():
        from crrelu_llm.errors import RecipeError

        raise RecipeError(
            "ref_model: under DeepSpeed ZeRO-3 the policy's parameters are partitioned and cannot be copied: "
            "load a second copy, patch it as the policy, and pass it as ref_model"
        )
    logger.info("reference: a frozen copy of the policy as passed (pass ref_model to choose another)")
    return copy.deepcopy(model).eval().requires_grad_(False)


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
        counts = accounting.account(
            lengths,
            rows,
            name,
            self.unit,
            max_length=args.max_length,
            max_prompt_length=limit,
            truncation_mode=args.truncation_mode,
        )
        if not hasattr(self, "data_accounting"):
            self.data_accounting = {}
        self.data_accounting[name] = counts
        # a partial batch trains unless the dataloader drops it
        batch = args.per_device_train_batch_size if name == "train" and args.dataloader_drop_last else 1
        accounting.check(counts, name, batch, getattr(self, "data_source", ""))
        if limit:
            kwargs = {"max_length": args.max_length, "max_prompt_length": limit, "mode": args.prompt_truncation_mode}
            return dataset.map(
                self._truncate_example,
                fn_kwargs=kwargs,
                desc=f"Truncating prompts to {limit} tokens ({args.prompt_truncation_mode}) within {args.max_length}",
            )
        return self._length_rule(dataset, args) if args.max_length is not None else dataset


class RankConsistencyCallback(TrainerCallback):
    """At the end of training, compare a checksum of the weights (and the activation parameters) across ranks
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
                logger.warning("ranks ended with different weights or activation parameters: %s", everyone)
            from accelerate.state import PartialState

            kind = str(PartialState().distributed_type).split(".")[-1]
            write_json(
                self.output_dir / run_files.RANK_CONSISTENCY,
                {"identical": identical, "distributed_type": kind, "ranks": everyone},
            )


def _value_sum(p: torch.Tensor) -> float:
    t = full_parameter(p)
    return float(t.double().sum().item()) if t.numel() else 0.0
