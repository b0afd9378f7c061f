"""Recipe keys and their checks that every objective shares, as dataclasses beside TRL's configs.

A recipe is flat YAML whose keys are TRL's own field names (``DPOConfig``/``SFTConfig``...,
``ModelConfig``) plus this project's: :class:`PatchArguments` (the patch, the reference),
:class:`~crrelu_llm.data.preference.DataArguments`, and the argument groups here that each
objective's config mixes into TRL's (:class:`ActivationParameterArguments`,
:class:`PromptTruncationArguments`, :class:`ReferenceCacheArguments`; the configs themselves sit
beside their trainers in :mod:`crrelu_llm.training.trainers`). Command-line flags override the
file. Every key is checked before any model is loaded.

A recipe may hold ``arms``: name -> keys that override the shared ones for that arm (``{arm}``
in any string value is replaced by the arm's name). ``--arm NAME`` picks one::

    crrelu-llm sft --config recipes/gpt2-large/hh/sft.yaml --arm crrelu
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crrelu_llm.errors import RecipeError
from crrelu_llm.ops.activation import CALIBRATE, DEFAULT_EPSILON_INIT, epsilon_init_value
from crrelu_llm.patching.discovery import activation_kwargs_value, is_matched

ACTIVATION_PARAMETER_MODES = ("train", "freeze", "only")


@dataclass
class PatchArguments:
    """This project's recipe keys: the patch, what of its parameters trains, the reference."""

    activation: str | None = field(
        default="crrelu",
        metadata={
            "help": "Activation to put into the MLPs: crrelu; another built-in candidate (swish_beta: learnable "
            "beta; relu2: squared ReLU); any transformers name (relu, gelu, ...) for a control arm; or the "
            "import path of your own nn.Module class, my_pkg.acts:MyActivation. Null or 'none' keeps the "
            "model as it is (the baseline arm)."
        },
    )
    activation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of the activation class (a mapping; on the command line as JSON), "
            "e.g. {beta_init: 1.702} for swish_beta. Recorded with the patch and used again at load time."
        },
    )
    epsilon_init: str = field(
        default=DEFAULT_EPSILON_INIT,
        metadata={
            "help": "Initial CRReLU epsilon: a number (the paper: 0.01), or 'calibrate': per layer, the "
            "least-squares value that best imitates the replaced activation on the original model's own "
            "pre-activations over calibration_samples training rows."
        },
    )
    calibration_samples: int = field(
        default=64, metadata={"help": "Training rows whose text calibrates eps (epsilon_init: calibrate)."}
    )
    refit: bool = field(
        default=False,
        metadata={
            "help": "The paper's dynamic variant, between stages: when the model this run starts from is already "
            "patched with matched_<base> (a preference run from its SFT run), fold each layer's learned correction "
            "into its base, measure mu and sigma again on calibration_samples training rows, and reset eps to 0. "
            "The run starts from the same function."
        },
    )
    swap_steps: int | None = field(
        default=None,
        metadata={
            "help": "Gradual swap (sft, distill): blend (1-a)*original + a*new activation, a from 0 to 1 over "
            "the first swap_steps steps; later checkpoints hold the pure new activation."
        },
    )
    patch_layers: list[int] | None = field(
        default=None, metadata={"help": "Block indices to patch (negative from the end); default all blocks."}
    )
    activation_parameters: str = field(
        default="train",
        metadata={
            "help": "What trains of the patched activations' own parameters (CRReLU's eps, a Swish's beta, your "
            "class's): train (with the model), freeze (kept fixed), only (they train alone). epsilon_mode is the "
            "same key under its old name."
        },
    )
    reference: str = field(
        default="policy",
        metadata={
            "help": "DPO reference model: 'policy' (the patched policy as it is when DPO starts: standard DPO), "
            "'original' (the unpatched model), or a checkpoint path (e.g. the SFT run)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (default: the model's)."}
    )
    crrelu_kernel: str = field(
        default="auto",
        metadata={"help": "CRReLU kernel: auto, torch, triton or compiled (see crrelu_llm.ops.kernels)."},
    )
    continue_adapter: bool = field(
        default=False,
        metadata={
            "help": "When model_name_or_path is a LoRA run: train its adapter further (with use_peft: true). "
            "Default: start from the run's adapter merged into its base model."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace an output_dir that holds a different run (another model or recipe). Without it "
            "such a directory is refused before anything is written; the same run resumes by itself."
        },
    )

    def __post_init__(self):
        if isinstance(self.activation, str) and self.activation.lower() in ("none", "null", ""):
            self.activation = None
        self.epsilon_init = epsilon_init_value(self.epsilon_init)
        self.activation_kwargs = activation_kwargs_value(self.activation_kwargs)
        if self.activation is not None:
            from crrelu_llm.patching.discovery import canonical_activation, check_activation, supports_calibration

            self.activation = canonical_activation(self.activation)
            initial = DEFAULT_EPSILON_INIT if self.epsilon_init == CALIBRATE else self.epsilon_init
            # unknown name -> closest valid ones; a class that is not an nn.Module or changes the shape: refused
            check_activation(self.activation, self.activation_kwargs, initial)
            if self.epsilon_init == CALIBRATE and not supports_calibration(self.activation, self.activation_kwargs):
                raise RecipeError(
                    f"epsilon_init: calibrate needs an activation class with a least_squares_init(x, "
                    f"target) method (crrelu, swish_beta); {self.activation} has none"
                )
        elif self.activation_kwargs:
            raise RecipeError("activation_kwargs needs an activation to build (activation is null)")
        if self.refit and not (self.activation and is_matched(self.activation)):
            raise RecipeError(
                f"refit: true folds and re-measures a matched_<base> correction; activation is {self.activation}"
            )
        if self.calibration_samples < 1:
            raise RecipeError(f"calibration_samples must be a positive number of rows, got {self.calibration_samples}")
        if self.swap_steps is not None and (self.swap_steps < 1 or self.activation is None):
            raise RecipeError("swap_steps must be a positive number of steps, with an activation to swap in")
        if self.activation_parameters not in ACTIVATION_PARAMETER_MODES:
            raise RecipeError(
                f"activation_parameters must be one of {', '.join(ACTIVATION_PARAMETER_MODES)}, "
                f"got {self.activation_parameters!r}"
            )
        from crrelu_llm.ops.kernels import KERNELS

        if self.crrelu_kernel not in KERNELS:
            raise RecipeError(f"crrelu_kernel must be one of {', '.join(KERNELS)}, got {self.crrelu_kernel!r}")


@dataclass
class ActivationParameterArguments:
    """The activation parameters' optimiser settings, carried by the trainer's ``args`` (see
    :class:`~crrelu_llm.training.trainers.dpo.CRReLUDPOConfig`)."""

    activation_learning_rate: float | None = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the activation-parameter group (CRReLU's eps, a Swish's beta, your class's "
            "parameters; no weight decay). At DPO learning rates a scalar barely moves, hence its own rate; null "
            "uses learning_rate (the paper's setup). epsilon_learning_rate is the same key under its old name."
        },
    )

    def __post_init__(self):
        if self.activation_learning_rate is not None and self.activation_learning_rate < 0:
            raise RecipeError(f"activation_learning_rate must be >= 0, got {self.activation_learning_rate}")
        super().__post_init__()


TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class PromptTruncationArguments:
    """Truncation as the DPO reference code (and so the paper) does it, which TRL no longer
    offers: when prompt + longest response exceed ``max_length``, the prompt is cut to
    ``max_prompt_length`` tokens (its end kept with ``keep_end``, used for Anthropic HH, whose
    last turns matter; its start with ``keep_start``), then the responses to what is left."""

    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens a prompt keeps when prompt + longest response exceed max_length (the DPO reference "
            "code: 256 within 512); null: TRL's own truncation of the whole sequence."
        },
    )
    prompt_truncation_mode: str = field(
        default="keep_end", metadata={"help": "keep_end (cut the prompt's start: HH) or keep_start (cut its end)."}
    )

    def __post_init__(self):
        if self.prompt_truncation_mode not in TRUNCATION_MODES:
            raise RecipeError(
                f"prompt_truncation_mode must be one of {', '.join(TRUNCATION_MODES)}, got "
                f"{self.prompt_truncation_mode!r}"
            )
        if self.max_prompt_length is not None:
            if self.max_prompt_length < 1:
                raise RecipeError(
                    f"max_prompt_length must be a positive number of tokens, got {self.max_prompt_length}"
                )
            if self.max_length is None or self.max_prompt_length >= self.max_length:
                raise RecipeError(
                    f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                    f"({self.max_length}), e.g. 256 within 512"
                )
            if getattr(self, "packing", False):
                raise RecipeError(
                    "max_prompt_length cuts prompts apart from responses, which packing does not keep: "
                    "set packing: false or drop max_prompt_length"
                )
        super().__post_init__()


@dataclass
class ReferenceCacheArguments:
    """Where DPO runs that share a reference keep its log-probabilities (with ``precompute_ref_log_probs``)."""

    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of reference log-probabilities shared across runs (every beta and seed of an "
            "arm), keyed by a checksum of the reference weights, the tokenized data and the truncation "
            "settings; needs precompute_ref_log_probs: true. Null: TRL's own cache only."
        },
    )

    def __post_init__(self):
        if self.ref_logps_cache_dir and not self.precompute_ref_log_probs:
            raise RecipeError(
                "ref_logps_cache_dir keeps precomputed reference log-probabilities: set "
                "precompute_ref_log_probs: true, or drop ref_logps_cache_dir"
            )
        super().__post_init__()
