"""A CRReLU checkpoint is never silently read as GELU, and can be shared without crrelu-llm.

Each check that matters runs in a fresh interpreter where ``import crrelu_llm`` is impossible
(``sys.modules["crrelu_llm"] = None``), as on a colleague's machine or an inference server."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

import crrelu_llm
from crrelu_llm.cli import main as cli_main
from crrelu_llm.patching.tiny import tiny_causal_lm

IDS = [[1, 5, 9, 13, 2, 7, 30, 31]]


def without_crrelu_llm(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that cannot import crrelu_llm."""
    script = tmp_path / "plain.py"
    script.write_text(
        "import sys\nsys.modules['crrelu_llm'] = None  # installed, but not importable here\n" + textwrap.dedent(code)
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)


def logits(model) -> list:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0, -1].tolist()


def patched_checkpoint(tmp_path, model_type="gpt2", **patch):
    model = tiny_causal_lm(model_type)
    crrelu_llm.patch_model(model, **patch)
    with torch.no_grad():  # trained-looking eps, different per block
        for i, p in enumerate(crrelu_llm.epsilon_parameters(model).values()):
            p.fill_(0.3 * (i + 1))
    out = tmp_path / f"{model_type}-{patch.get('activation', 'crrelu')}"
    model.save_pretrained(out)
    return out, model


LOAD_PLAIN = """
    import json, sys
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    except Exception as err:
        print(json.dumps({{"error": f"{{type(err).__name__}}: {{err}}"}}))
    else:
        import torch
        with torch.no_grad():
            out = model(torch.tensor({ids})).logits[0, -1].tolist()
        print(json.dumps({{"logits": out, "types": sorted({{type(m).__name__ for m in model.modules()}})}}))
"""


@pytest.mark.slow
def test_a_crrelu_checkpoint_fails_loudly_without_crrelu_llm(tmp_path):
    path, _ = patched_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["activation_function"] == "crrelu" and config["model_type"] == "gpt2"
    assert config["crrelu_llm_patch"]["config_key"] == {"name": "activation_function", "original": "gelu_new"}
    result = without_crrelu_llm(LOAD_PLAIN.format(path=str(path), ids=IDS), tmp_path)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "crrelu" in out.get("error", ""), out  # never a GELU model with the eps "ignored"


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type,patch", [("gpt2", {"layers": [0]}), ("bloom", {}), ("gpt2", {"layers": [1], "activation": "relu"})]
)
def test_patches_no_config_key_can_express_are_refused_by_their_model_type(tmp_path, model_type, patch):
    """Some blocks only, or BLOOM's hard-coded GELU: the saved model type is unknown to plain
    transformers, and crrelu-llm maps it back."""
    path, model = patched_checkpoint(tmp_path, model_type, **patch)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == f"crrelu-{model_type}" and config["crrelu_llm_patch"]["guard"] == "model_type"
    result = without_crrelu_llm(LOAD_PLAIN.format(path=str(path), ids=IDS), tmp_path)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert f"model type `crrelu-{model_type}`" in out.get("error", ""), out
    loaded = AutoModelForCausalLM.from_pretrained(path)  # with crrelu-llm: the patched model
    assert loaded.config.model_type == model_type and logits(loaded) == pytest.approx(logits(model), abs=1e-6)


@pytest.mark.slow
def test_a_relu_arm_checkpoint_loads_right_without_crrelu_llm(tmp_path):
    path, model = patched_checkpoint(tmp_path, activation="relu")
    result = without_crrelu_llm(LOAD_PLAIN.format(path=str(path), ids=IDS), tmp_path)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "ReLU" in out["types"] and "NewGELUActivation" not in out["types"]
    assert out["logits"] == pytest.approx(logits(model), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_type,patch", [("gpt2", {}), ("llama", {}), ("gpt2", {"layers": [0]}), ("bloom", {})])
def test_an_exported_checkpoint_loads_with_remote_code_only(tmp_path, model_type, patch):
    path, model = patched_checkpoint(tmp_path, model_type, **patch)
    out = tmp_path / "shared"
    assert cli_main(["export", str(path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_crrelu.CRReLU")
    code = LOAD_PLAIN.replace(
        "from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {path!r})",
        "from_pretrained({path!r}, trust_remote_code=True)",
    )
    result = without_crrelu_llm(code.format(path=str(out), ids=IDS), tmp_path)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "logits" in loaded, loaded.get("error", result.stderr[-2000:])
    assert loaded["logits"] == pytest.approx(logits(model), abs=1e-5)
    assert "CRReLU" in loaded["types"]
    # and with crrelu-llm installed the exported checkpoint still loads its own way
    again = AutoModelForCausalLM.from_pretrained(out)
    assert logits(again) == pytest.approx(logits(model), abs=1e-6)


def test_checkpoints_written_the_old_way_still_load(tmp_path):
    """Before the config named the activation, only config.crrelu_llm_patch recorded the patch."""
    path, model = patched_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["activation_function"] = config["crrelu_llm_patch"]["config_key"]["original"]
    del config["crrelu_llm_patch"]["config_key"]
    (path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert sorted(crrelu_llm.epsilon_values(loaded).values()) == pytest.approx([0.3, 0.6])
    assert logits(loaded) == pytest.approx(logits(model), abs=1e-6)


def test_export_refuses_an_unpatched_model(tmp_path, capsys):
    tiny_causal_lm("gpt2").save_pretrained(tmp_path / "plain")
    assert cli_main(["export", str(tmp_path / "plain"), "--out", str(tmp_path / "out")]) == 2
    assert "is not patched" in capsys.readouterr().err and not (tmp_path / "out").exists()
