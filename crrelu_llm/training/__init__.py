"""Training a patched model: recipes, trainers and the linear run.

- :mod:`~crrelu_llm.training.objectives`: ``OBJECTIVES``, the table of training commands (config,
  trainer, data, reference), read by the CLI, the recipe parser, the run and the experiments.
- :mod:`~crrelu_llm.training.config`: the recipe keys every objective shares (``PatchArguments``,
  ``ActivationParameterArguments``, ``PromptTruncationArguments``, ``ReferenceCacheArguments``).
- :mod:`~crrelu_llm.training.recipes`: ``parse_recipe``, ``recipe_from_dict`` (on ``TrlParser``),
  every key checked before a model loads.
- :mod:`~crrelu_llm.training.trainers`: one module per objective, its config beside its trainer
  (``trainers.dpo``: ``CRReLUDPOConfig``, ``CRReLUDPOTrainer``; ``sft``, ``simpo``, ``orpo``,
  ``kto``, ``distill``); :mod:`~crrelu_llm.training.mixins`: what they add to TRL's (the
  activation parameters' group and logs, the reference code's truncation, the rank check).
- :mod:`~crrelu_llm.training.train`: ``prepare``, ``run``, ``run_keys``: data, models, trainer,
  train, resume, save, model card.
- :mod:`~crrelu_llm.training.models`, :mod:`~crrelu_llm.training.output_dir`: every model a run
  loads (patched per the recipe, the reference or teacher); the output directory and checkpoints.
- :mod:`~crrelu_llm.training.recovery`, :mod:`~crrelu_llm.training.reference_cache`,
  :mod:`~crrelu_llm.training.model_card`: the gradual swap, shared reference log-probabilities, the card.
- :mod:`~crrelu_llm.training.process_group`: the end of a launched run (the process group
  left and freed before Python exits).
"""
