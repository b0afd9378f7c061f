"""The activation and its kernels, apart from the code that puts them into models.

- :mod:`~crrelu_llm.ops.activation`: ``CRReLU`` (the module, eps a learnable 0-dim parameter),
  ``CRReLUFunction`` (its fused autograd function) and ``crrelu`` (the functional form).
- :mod:`~crrelu_llm.ops.kernels`: the forward/backward arithmetic (PyTorch ops, Triton,
  ``torch.compile``) and ``set_kernel`` to choose one.
- :mod:`~crrelu_llm.ops.distributed`: eps under FSDP2 and DeepSpeed (``fsdp2_share_activation_parameters``,
  ``hold_scalars_as_vectors``, ``full_parameter``).
"""
