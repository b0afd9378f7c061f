"""The files a training run writes in its output directory: their names, owned here, for every
module that writes or reads them (the run, its evaluation, the report, the experiment's stages,
checkpoint loading).

Example::

    >>> from crrelu_llm import run_files
    >>> run_files.FINAL_METRICS
    'final_metrics.json'
"""

RECIPE = "recipe.yaml"  # the resolved recipe: what makes this run this run (compared on a rerun)
PATCH_REPORT = "patch_report.json"  # what the patch replaced, and the parameters it started from
DATA_SUMMARY = "data_summary.json"  # where the data came from and what reached the trainer
REFERENCE = "reference.json"  # the preference objective's reference model, or that it has none
RANK_CONSISTENCY = "rank_consistency.json"  # under a launcher: every rank's weights and parameters agree
FINAL_METRICS = "final_metrics.json"  # written last: the run finished
MODEL_CARD = "README.md"
