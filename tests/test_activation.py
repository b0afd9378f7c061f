import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.activations import ACT2FN

from crrelu_llm import CRReLU, CRReLUFunction, crrelu
from crrelu_llm.ops.activation import crrelu_reference
from crrelu_llm.patching.tiny import tiny_config

from helpers import load_script

count_saved_bytes = load_script("benchmarks/memory.py").count_saved_bytes


def _saved_bytes(fn, x):
    """Bytes autograd keeps for backward while running ``fn(x)``."""
    with count_saved_bytes() as saved:
        fn(x)
    return saved["bytes"]


def test_forward_is_the_formula_everywhere():
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    eps = 0.37
    expected = torch.clamp(x, min=0) + eps * x * torch.exp(-x * x / 2)
    got = crrelu(x, torch.tensor(eps, dtype=torch.float64))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # negative inputs are corrected too, not only the positive half
    assert (got[x < -0.5] < 0).all()


def test_module_has_one_learnable_scalar_named_epsilon():
    act = CRReLU()
    params = dict(act.named_parameters())
    assert list(params) == ["epsilon"]
    assert params["epsilon"].dim() == 0 and params["epsilon"].requires_grad
    assert params["epsilon"].item() == pytest.approx(0.01)
    assert CRReLU(epsilon_init=-0.2).epsilon.item() == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="finite"):
        CRReLU(epsilon_init=float("nan"))


def test_gradcheck_float64_for_x_and_eps():
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    for eps_value in (0.01, -0.8, 2.5):
        eps = torch.tensor(eps_value, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(CRReLUFunction.apply, (x, eps))
        assert torch.autograd.gradgradcheck(CRReLUFunction.apply, (x, eps))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matches_naive_expression(dtype, tol):
    torch.manual_seed(0)
    x0 = (torch.randn(64, 96) * 2).to(dtype)
    g = torch.randn(64, 96).to(dtype)
    results = []
    for fn in (lambda x, e: CRReLUFunction.apply(x, e), crrelu_reference):
        x = x0.clone().requires_grad_()
        eps = torch.tensor(0.3, dtype=dtype, requires_grad=True)
        y = fn(x, eps)
        y.backward(g)
        results.append((y.float(), x.grad.float(), eps.grad.float()))
    (y1, gx1, ge1), (y2, gx2, ge2) = results
    torch.testing.assert_close(y1, y2, rtol=tol, atol=tol)
    torch.testing.assert_close(gx1, gx2, rtol=tol, atol=tol)
    # the eps gradient is a sum over 6144 elements: compare relative to its scale
    assert abs(ge1.item() - ge2.item()) <= tol * max(1.0, abs(ge2.item())) * (10 if dtype == torch.bfloat16 else 1)


def test_bf16_eps_gradient_is_accurate_against_float64():
    torch.manual_seed(1)
    x = torch.randn(256, 512)
    g = torch.randn(256, 512)
    eps64 = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    CRReLUFunction.apply(x.double(), eps64).backward(g.double())
    eps16 = torch.tensor(0.01, dtype=torch.bfloat16, requires_grad=True)
    CRReLUFunction.apply(x.bfloat16(), eps16).backward(g.bfloat16())
    # accumulated in float32: error of the order of bf16 rounding of the inputs, not of the sum
    assert abs(eps16.grad.float().item() - eps64.grad.item()) < 0.02 * abs(eps64.grad.item()) + 1.0


def test_saves_only_its_input_like_gelu():
    x = torch.randn(128, 256, requires_grad=True)
    act = CRReLU()
    gelu_bytes = _saved_bytes(nn.GELU(), x)
    crrelu_bytes = _saved_bytes(act, x)
    naive_bytes = _saved_bytes(lambda t: crrelu_reference(t, act.epsilon), x)
    input_bytes = x.numel() * x.element_size()
    assert gelu_bytes == input_bytes
    assert crrelu_bytes - gelu_bytes <= 8  # the 0-dim epsilon, nothing full-size
    assert naive_bytes >= 2.5 * gelu_bytes  # what the fused function avoids


@pytest.mark.slow
def test_works_under_torch_compile():
    torch.manual_seed(0)
    act = CRReLU(0.2)
    compiled = torch.compile(act, fullgraph=True)
    x1 = torch.randn(16, 32, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y_eager = act(x1)
    y_eager.sum().backward()
    eager_eps_grad = act.epsilon.grad.clone()
    act.epsilon.grad = None
    y_comp = compiled(x2)
    y_comp.sum().backward()
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(act.epsilon.grad, eager_eps_grad)


def test_registered_name_builds_distinct_modules():
    a, b = ACT2FN["crrelu"], ACT2FN["crrelu"]
    assert isinstance(a, CRReLU) and a is not b and a.epsilon is not b.epsilon


@pytest.mark.parametrize(
    "model_type,field",
    [
        ("gpt2", "activation_function"),
        ("llama", "hidden_act"),
        ("gemma2", "hidden_activation"),
        ("opt", "activation_function"),
    ],
)
def test_config_activation_name_builds_crrelu_per_layer(model_type, field):
    config = tiny_config(model_type, num_hidden_layers=3) if model_type != "gpt2" else tiny_config("gpt2", n_layer=3)
    setattr(config, field, "crrelu")
    model = AutoModelForCausalLM.from_config(config)
    acts = [m for m in model.modules() if isinstance(m, CRReLU)]
    assert len(acts) == 3
    assert len({id(m.epsilon) for m in acts}) == 3


def test_no_grad_calls_skip_the_autograd_function_and_give_the_same_values():
    """Generation and evaluation build no graph: the module then calls the kernel directly
    (less host time per call), with bit-identical results."""
    torch.manual_seed(0)
    act = CRReLU(0.3)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 64, dtype=dtype)
        with torch.no_grad():
            fast = act.to(dtype)(x)
        with torch.enable_grad():
            graphed = act(x)
        assert fast.grad_fn is None and graphed.grad_fn is not None
        assert torch.equal(fast, graphed.detach())
    frozen = CRReLU(0.3).requires_grad_(False)
    assert frozen(torch.randn(4)).grad_fn is None  # nothing requires grad: no graph either


def _aten_ops(fn) -> list[str]:
    """The aten ops ``fn`` dispatches (views aside): per-call host time on a small tensor is
    about one fixed cost per op, so this is what the host-time benchmark measures, counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Count() as count:
        fn()
    return [op for op in count.ops if not op.startswith("aten.view")]


def test_a_small_cpu_call_costs_few_ops_and_chooses_its_kernel_once(monkeypatch):
    from crrelu_llm.ops import kernels

    x, g = torch.randn(4, 8, requires_grad=True), torch.ones(4, 8)
    module = CRReLU()
    chosen = []
    monkeypatch.setattr(kernels, "_choose", lambda cuda, real=kernels._choose: chosen.append(cuda) or real(cuda))
    kernels.set_kernel("auto")
    module(x).backward(g)  # the first call chooses (and caches the 0-dim zero)
    y = None

    def forward():
        nonlocal y
        y = module(x)

    forward_ops = _aten_ops(forward)
    backward_ops = _aten_ops(lambda: y.backward(g))
    with torch.no_grad():
        no_grad_ops = _aten_ops(lambda: module(x))
    # relu + eps * x * exp(-x^2/2): -x^2/2, exp, relu, one fused multiply-add (+ reading eps)
    assert len(forward_ops) <= 5 and len(no_grad_ops) <= 5, forward_ops
    # seven ops, reading eps, and autograd's accumulation into x.grad and eps.grad
    assert len(backward_ops) <= 10, backward_ops
    assert chosen == [False], "the kernel is chosen once per kind of device, not per call"
