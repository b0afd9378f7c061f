"""CUDA checks of the Triton kernel and the patched model. They need a GPU: on the CPU-only CI
machine they are skipped (and reported as skipped); scripts/gpu_check.sh runs them on a GPU."""

import pytest
import torch

import crrelu_llm
from crrelu_llm import CRReLU
from crrelu_llm.ops import kernels
from crrelu_llm.ops.activation import crrelu_reference
from crrelu_llm.ops.kernels import torch_ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_triton_kernel_matches_pytorch_ops_on_cuda(dtype, tol):
    from crrelu_llm.ops.kernels import triton_ops

    torch.manual_seed(0)
    for shape in ((8192, 3072), (3, 5), (4099,)):
        x = (torch.randn(shape, device="cuda") * 2).to(dtype)
        g = torch.randn(shape, device="cuda").to(dtype)
        eps = torch.tensor(0.3, device="cuda")
        torch.testing.assert_close(
            triton_ops.crrelu_forward(x, eps).float(), torch_ops.crrelu_forward(x, eps).float(), rtol=tol, atol=tol
        )
        gx1, ge1 = triton_ops.crrelu_backward(g, x, eps)
        gx2, ge2 = torch_ops.crrelu_backward(g, x, eps)
        torch.testing.assert_close(gx1.float(), gx2.float(), rtol=tol, atol=tol)
        assert abs(ge1.item() - ge2.item()) <= 1e-4 * max(1.0, abs(ge2.item()))


def test_auto_kernel_is_triton_on_cuda_and_module_matches_naive():
    assert kernels._implementation(torch.zeros(1, device="cuda"))[0].__module__.endswith("triton_ops")
    act = CRReLU(0.2).cuda()
    x = torch.randn(1024, 4096, device="cuda", requires_grad=True)
    act(x).sum().backward()
    gx, ge = x.grad.clone(), act.epsilon.grad.clone()
    x.grad = None
    eps = act.epsilon.detach().clone().requires_grad_()
    crrelu_reference(x, eps).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(ge, eps.grad, rtol=1e-4, atol=1e-3)


def test_patched_model_trains_and_compiles_on_cuda():
    from crrelu_llm.patching.tiny import tiny_causal_lm

    model = tiny_causal_lm("gpt2").cuda()
    crrelu_llm.patch_model(model)
    tokens = torch.randint(3, 100, (2, 16), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(tokens, labels=tokens).loss
    loss.backward()
    assert all(p.grad is not None for p in crrelu_llm.epsilon_parameters(model).values())
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(tokens).logits, model(tokens).logits, rtol=1e-3, atol=1e-3)
    # gradients too: torch 2.11 compiled an in-place forward into all-zero gradients
    eps = crrelu_llm.epsilon_parameters(model)
    model.zero_grad()
    model(tokens, labels=tokens).loss.backward()
    eager = {name: p.grad.clone() for name, p in eps.items()}
    model.zero_grad()
    compiled(tokens, labels=tokens).loss.backward()
    for name, p in eps.items():
        assert eager[name].abs().item() > 0
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-3, atol=1e-5)


def test_cuda_graph_captures_the_triton_kernel_and_sees_eps_change():
    """The Triton launch is captured like any kernel (no host sync, no host read of eps): a replay
    computes CRReLU of the new input with the eps the parameter holds at replay time, as after an
    optimizer step."""
    act = CRReLU(0.2).cuda().to(torch.bfloat16)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), act, torch.nn.Linear(256, 64)).cuda().to(torch.bfloat16)
    static_x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (Triton compiles here, not during capture)
            for _ in range(3):
                mlp(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = mlp(static_x)
        for eps_value in (0.2, -0.7):
            act.epsilon.fill_(eps_value)
            static_x.copy_(torch.randn(4, 64, device="cuda", dtype=torch.bfloat16))
            graph.replay()
            torch.cuda.synchronize()
            expected = mlp[2](crrelu_reference(mlp[0](static_x).float(), act.epsilon.float()).to(torch.bfloat16))
            torch.testing.assert_close(static_y.float(), expected.float(), rtol=2e-2, atol=2e-2)
