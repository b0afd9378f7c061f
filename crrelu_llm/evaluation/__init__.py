"""Measuring trained models: rewards, win rates, drift, benchmarks.

- :mod:`~crrelu_llm.evaluation.evaluate`: ``run_rewards``, ``run_winrate``, ``run_drift``,
  ``run_probe``, and ``run_benchmark`` (:mod:`~crrelu_llm.evaluation.benchmark`): evaluation
  stages as functions, one result file each.
- :mod:`~crrelu_llm.evaluation.scoring`: implicit rewards, drift (perplexity, KL), multiple choice.
- :mod:`~crrelu_llm.evaluation.generation`, :mod:`~crrelu_llm.evaluation.judges`: reproducible
  generation; reward-model, pairwise LLM and rule judges.
- :mod:`~crrelu_llm.evaluation.benchmark`: lm-eval on a model crrelu-llm loaded;
  :mod:`~crrelu_llm.evaluation.bench_tasks`: the tasks shipped here.
- :mod:`~crrelu_llm.evaluation.tasks`: synthetic tasks with verifiable answers.
"""
