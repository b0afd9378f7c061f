"""Experiments: every stage declared once, run in order or by an executor, and planned.

- :mod:`~crrelu_llm.experiments.stages`: ``declare`` (one typed ``StageSpec`` per stage).
- :mod:`~crrelu_llm.experiments.layout`: ``RunLayout``, the one owner of every path of a run.
- :mod:`~crrelu_llm.experiments.experiment`: ``load_experiment``, ``run_experiment``, the ledger.
- :mod:`~crrelu_llm.experiments.stage_actions`: what a training stage does (in process, or
  under a launcher); :mod:`~crrelu_llm.experiments.executors`: inline, local slots, Slurm.
- :mod:`~crrelu_llm.experiments.plan`: ``--plan``, every stage with its estimated cost.
"""
