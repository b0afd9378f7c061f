"""Putting an activation into a model, recording it, loading and sharing the result.

- :mod:`~crrelu_llm.patching.discovery`: ``find_activations`` (by type, feed-forward only),
  ``make_activation``, ``available_activations``.
- :mod:`~crrelu_llm.patching.patch`: ``patch_model``, ``patch_sites`` and the eps helpers
  (``epsilon_parameters``, ``epsilon_values``, ``peft_modules_to_save``).
- :mod:`~crrelu_llm.patching.record`: the record in ``config.crrelu_llm_patch``, ``PatchReport``,
  ``verify_patch`` and ``register_with_transformers`` (the hooks that rebuild a patch on load).
- :mod:`~crrelu_llm.patching.loading`: ``load_causal_lm``, ``load_tokenizer``, ``load_adapter_run``.
- :mod:`~crrelu_llm.patching.checkpoints`: ``inspect_model``, ``patch_checkpoint`` (the
  ``inspect`` and ``patch`` commands); :mod:`~crrelu_llm.patching.remote_code`: ``export_remote_code``.
- :mod:`~crrelu_llm.patching.probe`: activation statistics and least-squares eps;
  :mod:`~crrelu_llm.patching.calibration`: ``epsilon_init: calibrate``.
- :mod:`~crrelu_llm.patching.tiny`: tiny configs, models and a tokenizer built offline.
"""
