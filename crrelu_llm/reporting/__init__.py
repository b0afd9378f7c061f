"""Turning result files into the comparison: ``compare`` (report.md, report.json, plots).

- :mod:`~crrelu_llm.reporting.report`: ``compare``, ``compare_experiment``.
- :mod:`~crrelu_llm.reporting.report_stages`: each arm at every stage (drift, benchmarks, probes).
- :mod:`~crrelu_llm.reporting.summary`: the experiment's rows, console tables and readings.
"""
