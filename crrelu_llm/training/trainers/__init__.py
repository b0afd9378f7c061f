"""One module per training objective, each holding its config beside its trainer (TRL's
``dpo_config.py``/``dpo_trainer.py``): :mod:`~crrelu_llm.training.trainers.sft`,
:mod:`~crrelu_llm.training.trainers.dpo`, :mod:`~crrelu_llm.training.trainers.simpo`,
:mod:`~crrelu_llm.training.trainers.orpo`, :mod:`~crrelu_llm.training.trainers.kto`,
:mod:`~crrelu_llm.training.trainers.distill`. The pieces they share (the activation parameters'
optimizer group and logs, the reference code's prompt truncation) are in
:mod:`crrelu_llm.training.config` and :mod:`crrelu_llm.training.mixins`; which command runs which
is :data:`crrelu_llm.training.objectives.OBJECTIVES`. Nothing is imported here, so reading the
table imports no TRL.
"""
