"""Data in, before any model: reading, validating and counting rows.

- :mod:`~crrelu_llm.data.preference`: ``DataArguments``, ``load_preference_splits`` (HH, SHP,
  UltraFeedback, local files), one-line errors naming the row.
- :mod:`~crrelu_llm.data.sft`: ``load_sft_splits`` (SFT data, chosen responses, best-scored SHP).
- :mod:`~crrelu_llm.data.accounting`: what the length rules drop and cut, per split.
- :mod:`~crrelu_llm.data.encoding`: text pairs as token tensors; tokenizer and chat-template checks.
"""
