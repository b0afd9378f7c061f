"""Kernel choices and the training modes a patched model must support (CPU)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import crrelu_llm
from crrelu_llm.ops import kernels
from crrelu_llm.patching.tiny import tiny_causal_lm

TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from crrelu_llm import CRReLU
    from crrelu_llm.ops import kernels
    from crrelu_llm.ops.kernels import torch_ops, triton_ops
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        for shape in ((3, 5), (37, 301), (0, 8), (4099,)):
            x = (torch.randn(shape) * 2).to(dtype)
            g = torch.randn(shape).to(dtype)
            eps = torch.tensor(0.3)
            torch.testing.assert_close(triton_ops.crrelu_forward(x, eps).float(),
                                       torch_ops.crrelu_forward(x, eps).float(), rtol=tol, atol=tol)
            gx1, ge1 = triton_ops.crrelu_backward(g, x, eps)
            gx2, ge2 = torch_ops.crrelu_backward(g, x, eps)
            torch.testing.assert_close(gx1.float(), gx2.float(), rtol=tol, atol=tol)
            assert abs(ge1.item() - ge2.item()) <= 1e-4 * max(1.0, abs(ge2.item())), (ge1, ge2)
            gx, ge = triton_ops.crrelu_backward(g, x, eps, need_x=False, need_eps=True)
            assert gx is None and ge.item() == ge1.item()
    # through the module with the kernel forced, against the PyTorch path
    kernels.set_kernel("triton")
    act = CRReLU(0.2)
    x = torch.randn(64, 129, requires_grad=True)
    act(x).sum().backward()
    gx_triton, ge_triton = x.grad.clone(), act.epsilon.grad.clone()
    kernels.set_kernel("torch")
    x.grad = None; act.epsilon.grad = None
    act(x).sum().backward()
    torch.testing.assert_close(gx_triton, x.grad)
    torch.testing.assert_close(ge_triton, act.epsilon.grad)
    print("TRITON-OK")
    """
)


@pytest.mark.slow
def test_triton_kernel_matches_reference_in_interpreter_mode():
    pytest.importorskip("triton", reason="triton is in the [test] extra; install it to run this check")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRITON-OK" in result.stdout


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_functional_form_used_under_compile_equals_the_in_place_form(dtype, tol):
    """torch.compile traces the functional form (torch 2.11 zeroes the gradients of the in-place
    one); both must compute the same thing, including need_x/need_eps and the fp32 upcast."""
    from crrelu_llm.ops.kernels import torch_ops

    torch.manual_seed(0)
    x, g = (torch.randn(37, 301) * 2).to(dtype), torch.randn(37, 301).to(dtype)
    eps = torch.tensor(0.3, dtype=torch.float32)
    y = torch_ops.crrelu_forward_functional(x, eps)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch_ops.crrelu_forward(x, eps), rtol=tol, atol=tol)
    for need_x, need_eps in ((True, True), (True, False), (False, True)):
        gx1, ge1 = torch_ops.crrelu_backward_functional(g, x, eps, need_x, need_eps)
        gx2, ge2 = torch_ops.crrelu_backward(g, x, eps, need_x, need_eps)
        assert (gx1 is None) == (not need_x) and (ge1 is None) == (not need_eps)
        if need_x:
            assert gx1.dtype == dtype
            torch.testing.assert_close(gx1, gx2, rtol=tol, atol=tol)
        if need_eps:
            assert ge1.dtype == eps.dtype and ge1.item() == pytest.approx(ge2.item(), rel=1e-5)


def test_kernel_choice_is_validated():
    with pytest.raises(ValueError, match="unknown CRReLU kernel 'cuda'"):
        kernels.set_kernel("cuda")
    assert kernels.get_kernel() == "auto"


def test_auto_kernel_uses_pytorch_ops_on_cpu():
    forward, _ = kernels._implementation(torch.zeros(1))
    assert forward is kernels.torch_ops.crrelu_forward


def _loss_and_grads(model, tokens):
    model.zero_grad()
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tokens):
    model = tiny_causal_lm("llama")
    crrelu_llm.patch_model(model)
    model.train()
    model.config.use_cache = False
    loss_plain, grads_plain = _loss_and_grads(model, tokens)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, grads_ckpt = _loss_and_grads(model, tokens)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    eps_names = [n for n in grads_plain if n.endswith("epsilon")]
    assert len(eps_names) == 2
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_epsilon(tokens):
    model = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens, labels=tokens).loss
    loss.backward()
    assert torch.isfinite(loss)
    eps = crrelu_llm.epsilon_parameters(model)
    assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad) for p in eps.values())


@pytest.mark.slow
def test_whole_model_torch_compile_matches_eager(tokens):
    model = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(model, epsilon_init=0.3)
    eager_loss, eager_grads = _loss_and_grads(model, tokens)
    compiled = torch.compile(model)
    model.zero_grad()
    loss = compiled(tokens, labels=tokens).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager_loss, rtol=1e-4, atol=1e-5)
    for name, p in crrelu_llm.epsilon_parameters(model).items():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_static_cache_and_compiled_decoding_work_with_a_patched_model():
    """Greedy decoding with transformers' static cache, eager and under torch.compile, gives the
    same tokens as the default dynamic cache for a CRReLU model."""
    from crrelu_llm.patching.tiny import tiny_causal_lm

    model = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(model)
    with torch.no_grad():
        for p in crrelu_llm.epsilon_parameters(model).values():
            p.fill_(0.7)  # far from init, so a lost eps would change the tokens
    ids = torch.tensor([[1, 5, 9, 13]])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    dynamic = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), dynamic)
    model.forward = torch.compile(model.forward, dynamic=False)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), dynamic)
