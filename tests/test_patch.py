import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

import crrelu_llm
from crrelu_llm import CRReLU, NoActivationFoundError, epsilon_parameters, epsilon_values, patch_model
from crrelu_llm.patching.loading import check_stored_epsilons, load_causal_lm
from crrelu_llm.patching.tiny import tiny_causal_lm

from helpers import ARCHITECTURES


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_patch_replaces_mlp_activations_only(model_type, tokens, tmp_path):
    model = tiny_causal_lm(model_type)
    before_modules = dict(model.named_modules())
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_logits = _logits(model, tokens)

    report = patch_model(model, activation="crrelu", epsilon_init=0.01)

    assert report.count >= model.config.num_hidden_layers
    assert {r.old_type for r in report.replaced} == {ARCHITECTURES[model_type]}
    replaced = {r.path for r in report.replaced}
    for path, module in model.named_modules():
        if path in replaced:
            assert isinstance(module, CRReLU) and module.epsilon.item() == pytest.approx(0.01)
        elif not any(path.startswith(p + ".") for p in replaced):
            assert module is before_modules[path], f"{path} was touched"
    # every pre-existing weight is unchanged; the only new entries are the epsilons
    after_state = model.state_dict()
    assert set(after_state) - set(before_state) == {f"{p}.epsilon" for p in replaced}
    for key, value in before_state.items():
        assert torch.equal(after_state[key], value), key

    after_logits = _logits(model, tokens)
    assert not torch.allclose(before_logits, after_logits), "the swap is not function-preserving"

    # epsilon receives gradients through the loss
    model.zero_grad()
    model(tokens, labels=tokens).loss.backward()
    grads = [p.grad for p in epsilon_parameters(model).values()]
    assert len(grads) == report.count and all(g is not None and g.abs() > 0 for g in grads)

    # save -> from_pretrained rebuilds CRReLU and loads the same epsilons bit for bit
    with torch.no_grad():
        for i, p in enumerate(epsilon_parameters(model).values()):
            p.fill_(0.05 * (i + 1) - 0.123456789)
    expected_logits = _logits(model, tokens)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert epsilon_values(loaded) == epsilon_values(model)
    for name, p in epsilon_parameters(model).items():
        assert torch.equal(dict(loaded.named_parameters())[name], p)
    torch.testing.assert_close(_logits(loaded, tokens), expected_logits, rtol=0, atol=1e-5)
    check_stored_epsilons(loaded, tmp_path)


def test_report_lists_paths_types_and_count():
    model = tiny_causal_lm("gpt2")
    report = patch_model(model)
    text = str(report)
    assert "2 activation module(s) -> crrelu" in text
    assert "transformer.h.0.mlp.act: NewGELUActivation -> CRReLU" in text
    data = json.loads(report.to_json())
    assert data["count"] == 2 and data["replaced"][1]["layer"] == 1


def test_layers_restricts_the_patch_and_negative_indices_count_from_the_end(tmp_path, tokens):
    model = tiny_causal_lm("llama", num_hidden_layers=4)
    report = patch_model(model, layers=[0, -1])
    assert report.layers == [0, 3]
    assert [r.path for r in report.replaced] == ["model.layers.0.mlp.act_fn", "model.layers.3.mlp.act_fn"]
    assert type(model.model.layers[1].mlp.act_fn).__name__ == "SiLUActivation"
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    kinds = [type(layer.mlp.act_fn).__name__ for layer in loaded.model.layers]
    assert kinds == ["CRReLU", "SiLUActivation", "SiLUActivation", "CRReLU"]


def test_control_arms_use_ordinary_transformers_names(tokens):
    relu_model = tiny_causal_lm("gpt2")
    report = patch_model(relu_model, activation="relu")
    assert {r.new_type for r in report.replaced} == {"ReLU"} and report.epsilon_init is None
    # relu == crrelu with eps = 0
    crrelu_model = tiny_causal_lm("gpt2")
    patch_model(crrelu_model, epsilon_init=0.0)
    torch.testing.assert_close(_logits(relu_model, tokens), _logits(crrelu_model, tokens))


def test_successive_patches_are_recorded_and_rebuilt(tmp_path):
    model = tiny_causal_lm("gpt2", n_layer=3)
    patch_model(model, activation="crrelu")
    patch_model(model, activation="relu", layers=[1])
    record = crrelu_llm.patch_record(model)
    assert record["modules"]["transformer.h.1.mlp.act"] == {"activation": "relu", "original": "NewGELUActivation"}
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert [type(b.mlp.act).__name__ for b in loaded.transformer.h] == ["CRReLU", "ReLU", "CRReLU"]


def test_epsilon_missing_from_checkpoint_is_initialised_not_garbage(tmp_path):
    model = tiny_causal_lm("gpt2")
    patch_model(model, epsilon_init=0.05)
    model.save_pretrained(tmp_path)
    file = os.path.join(tmp_path, "model.safetensors")
    state = {k: v for k, v in load_file(file).items() if not k.endswith(".epsilon")}
    save_file(state, file, metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert list(epsilon_values(loaded).values()) == [pytest.approx(0.05)] * 2


def test_stored_epsilon_mismatch_is_detected(tmp_path):
    model = tiny_causal_lm("gpt2")
    patch_model(model)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.transformer.h[0].mlp.act.epsilon.fill_(0.5)  # as if re-initialised on load
    with pytest.raises(RuntimeError, match="not loaded faithfully"):
        check_stored_epsilons(model, tmp_path)


def test_vector_epsilon_for_deepspeed_keeps_values_gradients_and_checkpoint_format(tmp_path, tokens):
    """DeepSpeed cannot broadcast 0-dim parameters, so under DeepSpeed eps is held as (1,).
    Nothing else may change: outputs, gradients, the optimizer's view, and 0-dim checkpoints."""
    model = tiny_causal_lm("gpt2")
    patch_model(model, epsilon_init=0.05)
    with torch.no_grad():
        model.transformer.h[1].mlp.act.epsilon.fill_(-0.2)
    before = _logits(model, tokens)
    assert crrelu_llm.ops.distributed.hold_scalars_as_vectors(model) == 2
    assert crrelu_llm.ops.distributed.hold_scalars_as_vectors(model) == 0  # idempotent
    eps = epsilon_parameters(model)
    assert sorted(eps) == ["transformer.h.0.mlp.act.epsilon", "transformer.h.1.mlp.act.epsilon"]
    assert all(p.shape == (1,) for p in eps.values())
    assert list(epsilon_values(model).values()) == [pytest.approx(0.05), pytest.approx(-0.2)]
    torch.testing.assert_close(_logits(model, tokens), before, rtol=0, atol=0)
    model(tokens, labels=tokens).loss.backward()
    assert all(p.grad is not None and p.grad.shape == (1,) and p.grad.abs().item() > 0 for p in eps.values())
    # checkpoints keep the 0-dim format and load back into either shape
    assert all(model.state_dict()[name].shape == () for name in eps)
    model.save_pretrained(tmp_path)
    assert load_file(os.path.join(tmp_path, "model.safetensors"))["transformer.h.1.mlp.act.epsilon"].shape == ()
    loaded = load_causal_lm(str(tmp_path))
    assert list(epsilon_values(loaded).values()) == [pytest.approx(0.05), pytest.approx(-0.2)]
    vector = CRReLU()
    vector.use_vector_epsilon()
    vector.load_state_dict({"epsilon": torch.tensor(0.7)})
    assert vector.epsilon.shape == (1,) and vector.epsilon.item() == pytest.approx(0.7)
    scalar = CRReLU()
    scalar.load_state_dict(vector.state_dict())
    assert scalar.epsilon.shape == () and scalar.epsilon.item() == pytest.approx(0.7)


def test_trainer_save_stores_vector_epsilons_as_scalars(tmp_path):
    """What a ZeRO-3 consolidated state dict looks like: (1,) epsilons, saved 0-dim."""
    from crrelu_llm.training.mixins import ActivationParameterMixin

    model = tiny_causal_lm("gpt2")
    patch_model(model)
    crrelu_llm.ops.distributed.hold_scalars_as_vectors(model)
    state = {k: v.clone() for k, v in model.named_parameters()}  # parameters as they are, no hooks
    assert state["transformer.h.0.mlp.act.epsilon"].shape == (1,)
    saved = {}

    class Base:
        def _save(self, output_dir=None, state_dict=None):
            saved.update(state_dict)

    trainer = type("T", (ActivationParameterMixin, Base), {})()
    trainer.model = model
    trainer._save(str(tmp_path), state_dict=state)
    assert saved["transformer.h.0.mlp.act.epsilon"].shape == ()
    assert saved["transformer.wte.weight"].shape == state["transformer.wte.weight"].shape


def test_local_checkpoint_with_tokenizer_loads_like_a_hub_one(tmp_path):
    from crrelu_llm.patching.tiny import tiny_tokenizer

    tiny_causal_lm("gpt2").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = load_causal_lm(str(tmp_path))
    report = patch_model(model)
    assert report.count == 2


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"activation": "crelu"}, ValueError, "did you mean 'crrelu'"),
        ({"activation": 3}, TypeError, "string name"),
        ({"layers": [2]}, ValueError, "out of range: the model has 2 blocks"),
        ({"layers": [-3]}, ValueError, "out of range"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"layers": ["0"]}, TypeError, "integers"),
        ({"layers": "0"}, TypeError, "list of block indices"),
        ({"epsilon_init": float("inf")}, ValueError, "finite"),
    ],
)
def test_bad_arguments_fail_clearly_and_leave_the_model_alone(kwargs, error, match):
    model = tiny_causal_lm("gpt2")
    with pytest.raises(error, match=match):
        patch_model(model, **kwargs)
    assert not any(isinstance(m, CRReLU) for m in model.modules())
    assert crrelu_llm.patch_record(model) is None


def test_non_model_object_is_refused():
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        patch_model("gpt2")


def test_model_without_feed_forward_activation_lists_what_it_found():
    with pytest.raises(NoActivationFoundError, match=r"mixer\.act \(SiLUActivation: inside MambaMixer"):
        patch_model(tiny_causal_lm("mamba"))
    with pytest.raises(NoActivationFoundError, match="no activation modules at all"):
        patch_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))


def test_non_mlp_activations_are_left_alone():
    model = tiny_causal_lm("jamba")  # mamba mixers carry their own SiLU
    report = patch_model(model)
    assert all(".mamba." not in r.path for r in report.replaced)
    assert any(".mamba." in s.path for s in report.skipped)


def test_peft_lora_trains_saves_and_merges_epsilon(tmp_path, tokens):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = tiny_causal_lm("llama")
    patch_model(model)
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        modules_to_save=crrelu_llm.peft_modules_to_save(model),
    )
    peft_model = get_peft_model(model, config)
    trainable_eps = [n for n, p in peft_model.named_parameters() if p.requires_grad and n.endswith("epsilon")]
    assert len(trainable_eps) == 2
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):
        peft_model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = {n: p.item() for n, p in peft_model.named_parameters() if n in trainable_eps}
    assert all(v != pytest.approx(0.01) for v in trained.values())
    expected = _logits(peft_model, tokens)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(k.endswith(".epsilon") for k in adapter) == 2

    base = tiny_causal_lm("llama")
    patch_model(base)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(_logits(reloaded, tokens), expected)
    merged = reloaded.merge_and_unload()
    assert sorted(epsilon_values(merged).values()) == pytest.approx(sorted(trained.values()))
    torch.testing.assert_close(_logits(merged, tokens), expected, rtol=0, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert epsilon_values(final) == epsilon_values(merged)
