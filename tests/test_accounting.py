"""Every pair accounted for: what the length rules drop or cut is counted, and a split left
empty (or too small to split) is one line of bad input, with nothing written."""

import json
from pathlib import Path

import pytest
from datasets import Dataset

from crrelu_llm.cli import main as cli_main

HUMAN = "\n\nHuman: what is {a} plus {b}? please tell me right now, I am waiting here!{pad}\n\nAssistant:"


def hh_file(path: Path, n: int = 40, long_every: int = 0) -> Path:
    """Anthropic-HH rows; every ``long_every``-th prompt is 60 characters longer."""
    rows = []
    for i in range(n):
        pad = " and" * 15 if long_every and i % long_every == 0 else ""
        prompt = HUMAN.format(a=i, b=i + 1, pad=pad)
        rows.append({"chosen": prompt + f" It is {2 * i + 1}.", "rejected": prompt + f" It is {2 * i + 2}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo(data: Path, out: Path, *flags) -> int:
    return cli_main(
        [
            "dpo",
            "--model_name_or_path",
            "tiny-gpt2",
            "--dataset_name",
            str(data),
            "--dataset_format",
            "hh",
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--report_to",
            "none",
            *flags,
        ]
    )


def test_pairs_that_all_fall_to_the_length_rule_are_one_line_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert dpo(hh_file(tmp_path / "hh.jsonl"), out, "--max_length", "64") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crrelu-llm")]
    assert len(err) == 1 and "all 38 pairs dropped" in err[0] and "at least max_length 64" in err[0]
    assert "median 85" in err[0] and "max_prompt_length" in err[0] and "hh.jsonl [train]" in err[0]
    assert not out.exists()


def test_what_the_length_rule_drops_and_cuts_is_counted_per_split_and_printed(tmp_path, capsys, caplog):
    from crrelu_llm.patching.loading import load_tokenizer

    data = hh_file(tmp_path / "hh.jsonl", n=60, long_every=4)
    out = tmp_path / "run"
    assert dpo(data, out, "--max_length", "100") == 0
    summary = json.loads((out / "data_summary.json").read_text())
    tokenizer = load_tokenizer("tiny-gpt2")
    train = summary["splits"]["train"]
    assert summary["read"]["train"] == {"rows_read": 60, "dropped_malformed": 0, "filtered_score_ratio": 0}
    assert train["rows"] == summary["train_rows"] == 57
    # counted independently: 15 of the 60 prompts are longer than 100 tokens, the held-out 3 are a random 5%
    prompts = [
        json.loads(line)["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"
        for line in data.read_text().splitlines()
    ]
    long = sum(len(tokenizer(p)["input_ids"]) >= 100 for p in prompts)
    assert long == 15
    evaluation = summary["splits"]["eval"]
    assert train["dropped_by_length"] + evaluation["dropped_by_length"] == long
    assert train["reach_training"] == 57 - train["dropped_by_length"]
    assert train["prompt_tokens"]["max"] >= 100 and train["response_tokens"]["median"] > 0
    printed = capsys.readouterr().out
    assert f"data [train]: 57 pairs, {train['dropped_by_length']} dropped by length" in printed
    assert "dropped or cut by the length rule" in caplog.text and "raise max_length" in caplog.text
    card = (out / "README.md").read_text()
    assert f"{train['dropped_by_length']} dropped by the length rule" in card


def test_max_prompt_length_cuts_prompts_instead_and_counts_them(tmp_path):
    out = tmp_path / "run"
    assert dpo(hh_file(tmp_path / "hh.jsonl"), out, "--max_length", "64", "--max_prompt_length", "48") == 0
    train = json.loads((out / "data_summary.json").read_text())["splits"]["train"]
    assert train["dropped_by_length"] == 0 and train["prompt_cut"] == 38 and train["reach_training"] == 38
    assert train["rule"].startswith("max_prompt_length 48")


def test_a_file_too_small_to_hold_out_an_evaluation_split_is_one_line(tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text(hh_file(tmp_path / "hh.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "run"
    assert dpo(one, out) == 2
    err = capsys.readouterr().err.strip()
    assert "1 row(s) in split 'train' cannot be split with eval_fraction 0.05" in err and "one.jsonl" in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["dpo", "sft"])
def test_the_length_rule_is_trl_s_own(tmp_path, kind):
    """Pins what TRL's _prepare_dataset does with max_length: the trainers tokenize without it,
    count, then apply the same rule; a TRL release that changes the rule fails here."""
    from trl import DPOTrainer, SFTTrainer

    from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer
    from crrelu_llm.training.objectives import OBJECTIVES
    from crrelu_llm.training.recipes import recipe_from_dict

    rows = [
        {"prompt": "Q: " + "x" * (10 + 7 * i) + " =", "chosen": " yes" * (1 + i % 5), "rejected": " no" * (1 + i % 3)}
        for i in range(12)
    ]
    if kind == "sft":
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    dataset = Dataset.from_list(rows)
    args = recipe_from_dict(
        kind,
        {
            "model_name_or_path": "tiny-gpt2",
            "output_dir": str(tmp_path),
            "max_length": 40,
            "report_to": "none",
            "use_cpu": True,
            "per_device_train_batch_size": 1,
        },
    )[2]
    tokenizer = load_tokenizer("tiny-gpt2")
    trainer = OBJECTIVES[kind].trainer(
        model=load_causal_lm("tiny-gpt2"),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        **({"ref_model": load_causal_lm("tiny-gpt2")} if kind == "dpo" else {}),
    )
    trl = DPOTrainer if kind == "dpo" else SFTTrainer
    extra = (args.packing, None) if kind == "sft" else ()
    ours = trainer._prepare_dataset(dataset, tokenizer, args, *extra, "train")
    theirs = trl._prepare_dataset(trainer, dataset, tokenizer, args, *extra, "train")
    columns = ("prompt_ids", "chosen_ids", "rejected_ids") if kind == "dpo" else ("input_ids",)
    assert 0 < len(theirs) < len(dataset) or kind == "sft"  # the rule did something here
    assert [[row[c] for c in columns] for row in ours] == [[row[c] for c in columns] for row in theirs]
    counts = trainer.data_accounting["train"]
    assert counts["rows"] - counts["dropped_by_length"] == len(theirs)


def test_evaluations_count_what_the_length_rule_leaves_out(tmp_path):
    from crrelu_llm.evaluation import evaluate

    data = hh_file(tmp_path / "hh.jsonl", n=60, long_every=4)
    drift = evaluate.run_drift("tiny-gpt2", "tiny-gpt2", str(data), max_length=100, out=tmp_path / "d")
    counted = drift["data"]["lengths"]
    assert counted["rows"] == 3 and counted["dropped_by_length"] + counted["reach_evaluation"] == 3
    rewards = evaluate.run_rewards(
        "tiny-gpt2", "tiny-gpt2", str(data), max_length=100, out=tmp_path / "r", max_samples=None
    )
    lengths = rewards["data"]["lengths"]
    assert rewards["n"] == lengths["reach_evaluation"] == lengths["rows"] - lengths["dropped_by_length"]
    with pytest.raises(Exception, match="all 3 pairs dropped"):
        evaluate.run_drift("tiny-gpt2", "tiny-gpt2", str(data), max_length=40, out=tmp_path / "d2")
    assert not (tmp_path / "d2").exists()
