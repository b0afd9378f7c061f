"""The SFT -> DPO pipeline on tiny models: recipes, eps training, references, outputs, resume."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import crrelu_llm
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import RecipeError
from crrelu_llm.training.recipes import parse_recipe
from crrelu_llm.training.train import prepare, run

from helpers import Crash, CrashAfterStep3, recipe


def parse(command, path, *flags):
    return parse_recipe(command, ["--config", str(path), *flags])


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"betta": 0.1}, "unknown key 'betta'; did you mean 'beta'?"),
        ({"max_completion_length": 128}, "'max_completion_length' was removed from TRL: use max_length"),
        ({"rpo_alpha": 1.0}, "loss_type: [sigmoid, sft]"),
        ({"beta": "high"}, "'beta' must be a float, got 'high'"),
        ({"activation": "crelu"}, "did you mean 'crrelu'"),
        ({"activation_parameters": "maybe"}, "activation_parameters must be one of train, freeze, only"),
        ({"use_liger_kernel": True}, "silently bypassed"),
    ],
)
def test_bad_recipes_stop_before_any_model_is_loaded(tmp_path, pairs_file, bad, message, capsys):
    path = recipe(tmp_path, pairs_file, **bad)
    assert cli_main(["dpo", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_flags_override_the_file_and_keys_are_trl_fields(tmp_path, pairs_file):
    patch_args, data_args, training_args, model_args = parse(
        "dpo", recipe(tmp_path, pairs_file, beta=0.1), "--beta", "0.3", "--output_dir", str(tmp_path / "b")
    )
    assert training_args.beta == 0.3 and training_args.output_dir == str(tmp_path / "b")
    assert model_args.model_name_or_path == "tiny-gpt2" and patch_args.activation == "crrelu"
    assert data_args.dataset_name == str(pairs_file)
    with pytest.raises(RecipeError, match="does not exist"):
        parse_recipe("dpo", ["--config", str(tmp_path / "nope.yaml")])


def test_old_key_names_arrive_under_their_new_ones_in_a_file_and_as_flags(tmp_path, pairs_file, capsys):
    """epsilon_mode and epsilon_learning_rate apply to any activation class's parameters: they are
    activation_parameters and activation_learning_rate now, and recipes written before still read."""
    patch_args, _, training_args, _ = parse(
        "dpo", recipe(tmp_path, pairs_file, epsilon_mode="freeze", epsilon_learning_rate=0.02)
    )
    assert patch_args.activation_parameters == "freeze" and training_args.activation_learning_rate == 0.02
    patch_args, *_ = parse("dpo", recipe(tmp_path, pairs_file), "--epsilon-mode", "only")
    assert patch_args.activation_parameters == "only"
    both = recipe(tmp_path, pairs_file, epsilon_mode="freeze", activation_parameters="only")
    assert cli_main(["dpo", "--config", str(both)]) == 2
    assert "epsilon_mode ('freeze') is another name for activation_parameters ('only')" in capsys.readouterr().err


def test_mistyped_flags_are_named_before_other_errors(tmp_path, pairs_file, capsys):
    # bf16 on a CPU-only machine is an error too, but the typo is what the user needs to see
    path = recipe(tmp_path, pairs_file, bf16=True, use_cpu=False)
    assert cli_main(["dpo", "--config", str(path), "--betta", "0.3", "--max-completion-length=64"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag --betta; did you mean --beta?" in err
    assert "--max_completion_length was removed from TRL" in err
    # dashed spellings and --no_ forms of boolean fields are real flags
    args = parse("dpo", recipe(tmp_path, pairs_file), "--output-dir", str(tmp_path / "d"), "--no_remove_unused_columns")
    assert args[2].output_dir == str(tmp_path / "d") and args[2].remove_unused_columns is False


# --------------------------------------------------------------------------- training


def test_dpo_run_trains_epsilon_in_its_own_group_and_writes_its_outputs(tmp_path, pairs_file, capsys):
    args = parse("dpo", recipe(tmp_path, pairs_file, weight_decay=0.1, output_dir=str(tmp_path / "prepared")))
    prepared = prepare("dpo", *args)
    # the run says what it replaced, in the user's terms
    assert "patched 2 modules: NewGELUActivation -> CRReLU, eps 0.01" in capsys.readouterr().out
    optimizer = prepared.trainer.create_optimizer()
    eps_groups = [g for g in optimizer.param_groups if g.get("name") == "activation_parameters"]
    assert len(eps_groups) == 1 and eps_groups[0]["lr"] == 1e-2 and eps_groups[0]["weight_decay"] == 0.0
    assert len(eps_groups[0]["params"]) == 2
    others = [p for g in optimizer.param_groups if g is not eps_groups[0] for p in g["params"]]
    assert not {id(p) for p in eps_groups[0]["params"]} & {id(p) for p in others}

    metrics = run("dpo", *parse("dpo", recipe(tmp_path, pairs_file)))
    out = tmp_path / "run"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "patch_report.json",
        "reference.json",
        "README.md",
        "final_metrics.json",
        "rank_consistency.json",
    ):
        assert (out / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(out)
    eps = crrelu_llm.epsilon_values(model)
    assert len(eps) == 2 and all(v != pytest.approx(0.01, abs=1e-4) for v in eps.values())  # it moved
    assert sorted(eps.values()) == pytest.approx(sorted([metrics["final_epsilon/00"], metrics["final_epsilon/01"]]))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "epsilon/00" in entry]
    assert len(logged) >= 4 and logged[0]["epsilon/00"] != logged[-1]["epsilon/00"]
    card = (out / "README.md").read_text()
    assert "tiny-gpt2" in card and "NewGELUActivation -> crrelu" in card and "start of DPO" in card
    assert "eval_rewards/accuracies" in card
    # how to load it, and where it can and cannot be served
    assert "trust_remote_code=True" in card and "crrelu-llm export" in card and "llama.cpp" in card
    assert json.loads((out / "reference.json").read_text())["reference"] == "policy"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["beta"] == 0.1


def test_baseline_arm_is_the_same_recipe_with_the_patch_off(tmp_path, pairs_file, capsys):
    run("sft", *parse("sft", recipe(tmp_path, pairs_file, activation=None, max_steps=2)))
    assert "not patched: tiny-gpt2 trains with its own activations" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert not any(isinstance(m, crrelu_llm.CRReLU) for m in model.modules())
    assert crrelu_llm.patch_record(model) is None
    assert json.loads((tmp_path / "run" / "patch_report.json").read_text()) is None


@pytest.mark.parametrize("mode", ["freeze", "only"])
def test_epsilon_can_be_frozen_or_trained_alone(tmp_path, pairs_file, mode):
    from crrelu_llm.patching.tiny import tiny_causal_lm

    run("sft", *parse("sft", recipe(tmp_path, pairs_file, activation_parameters=mode, max_steps=2)))
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    start = tiny_causal_lm("gpt2", seed=0)
    eps = list(crrelu_llm.epsilon_values(trained).values())
    weights_moved = not torch.equal(trained.transformer.h[0].mlp.c_fc.weight, start.transformer.h[0].mlp.c_fc.weight)
    if mode == "freeze":
        assert eps == [pytest.approx(0.01)] * 2 and weights_moved
    else:
        assert all(v != pytest.approx(0.01) for v in eps) and not weights_moved


# --------------------------------------------------------------------------- the reference model


def completion_logps(model, batch):
    """Summed log-probabilities of the completion tokens, computed independently of TRL."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    tokens = batch["input_ids"][:, 1:]
    logps = logits.float().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def _expected(choice, tmp_path):
    from crrelu_llm.patching.tiny import tiny_causal_lm

    if choice == "original":
        return tiny_causal_lm("gpt2", seed=0)
    if choice == "policy":
        model = tiny_causal_lm("gpt2", seed=0)
        crrelu_llm.patch_model(model)
        return model
    return AutoModelForCausalLM.from_pretrained(choice).eval()


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory, pairs_file):
    tmp = tmp_path_factory.mktemp("sft")
    run("sft", *parse("sft", recipe(tmp, pairs_file, max_steps=3)))
    return str(tmp / "run")


@pytest.mark.parametrize("precompute", [False, True])
@pytest.mark.parametrize("peft", [False, True])
@pytest.mark.parametrize("choice", ["policy", "original", "sft"])
def test_the_reference_is_the_one_the_recipe_chose(tmp_path, pairs_file, sft_checkpoint, choice, precompute, peft):
    reference = sft_checkpoint if choice == "sft" else choice
    extra = {"use_peft": True, "lora_r": 4, "lora_target_modules": ["c_attn"]} if peft else {}
    args = parse("dpo", recipe(tmp_path, pairs_file, reference=reference, precompute_ref_log_probs=precompute, **extra))
    prepared = prepare("dpo", *args)
    trainer = prepared.trainer
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    expected_chosen, expected_rejected = completion_logps(_expected(reference, tmp_path), batch)
    if precompute:
        got_chosen = torch.tensor([r["ref_chosen_logps"] for r in rows])
        got_rejected = torch.tensor([r["ref_rejected_logps"] for r in rows])
    else:
        got_chosen, got_rejected = completion_logps(trainer.ref_model, batch)
    torch.testing.assert_close(got_chosen, expected_chosen, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_rejected, expected_rejected, rtol=1e-4, atol=1e-4)
    # and it is not one of the other candidates
    for other in {"policy", "original", sft_checkpoint} - {reference}:
        other_chosen, _ = completion_logps(_expected(other, tmp_path), batch)
        assert not torch.allclose(other_chosen, expected_chosen, atol=1e-4), other
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    info = json.loads((tmp_path / "run" / "reference.json").read_text())
    assert info["reference"] == reference and info["precompute_ref_log_probs"] == precompute and info["peft"] == peft


# --------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_to_the_same_weights_and_epsilon(tmp_path, pairs_file, caplog):

    straight = tmp_path / "straight"
    straight.mkdir()
    run("dpo", *parse("dpo", recipe(straight, pairs_file)))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    path = recipe(resumed, pairs_file)
    with pytest.raises(Crash):
        run("dpo", *parse("dpo", path), callbacks=[CrashAfterStep3()])
    assert (resumed / "run" / "checkpoint-2").exists() and not (resumed / "run" / "model.safetensors").exists()
    caplog.clear()
    run("dpo", *parse("dpo", path))  # picks up checkpoint-2 by itself
    assert f"resuming from {resumed / 'run' / 'checkpoint-2'}" in caplog.text
    state = json.loads((resumed / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4

    a = AutoModelForCausalLM.from_pretrained(straight / "run")
    b = AutoModelForCausalLM.from_pretrained(resumed / "run")
    assert crrelu_llm.epsilon_values(a) == crrelu_llm.epsilon_values(b)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_dpo_from_a_patched_sft_checkpoint_keeps_its_trained_epsilon(
    tmp_path, pairs_file, sft_checkpoint, caplog, capsys
):
    sft_eps = crrelu_llm.epsilon_values(AutoModelForCausalLM.from_pretrained(sft_checkpoint))
    assert all(v != pytest.approx(0.01) for v in sft_eps.values())
    args = parse("dpo", recipe(tmp_path, pairs_file, model_name_or_path=sft_checkpoint, activation="crrelu"))
    prepared = prepare("dpo", *args)
    assert "already patched with crrelu" in caplog.text
    assert "not patched again:" in capsys.readouterr().out
    assert crrelu_llm.epsilon_values(prepared.trainer.model) == sft_eps
    assert prepared.patch_report["already_patched"] is True
