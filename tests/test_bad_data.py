"""Bad data never ends in a traceback: chat data without a template, malformed SFT rows,
conversational evaluation data, and messages that name the flag or key as the user typed it."""

import json
from pathlib import Path

import pytest

from crrelu_llm.cli import main as cli_main


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crrelu-llm")]
    assert len(lines) == 1, lines
    return lines[0]


MESSAGES = [
    {"messages": [{"role": "user", "content": f"what is {i}+1?"}, {"role": "assistant", "content": f"{i + 1}"}]}
    for i in range(30)
]
CONVERSATIONAL_PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"q{i}"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    for i in range(30)
]


@pytest.mark.parametrize(
    "command,rows,fix",
    [("sft", MESSAGES, "chat_template_path"), ("dpo", CONVERSATIONAL_PAIRS, "tokenizer_name_or_path")],
)
def test_chat_data_and_a_tokenizer_without_a_template_stop_before_any_weights_load(
    tmp_path, capsys, monkeypatch, command, rows, fix
):
    import crrelu_llm.training.models

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the data was checked")

    monkeypatch.setattr(crrelu_llm.training.models, "load_causal_lm", no_weights)
    data, out = write(tmp_path / "msg.jsonl", rows), tmp_path / "run"
    assert (
        cli_main([command, "--model_name_or_path", "tiny-llama", "--dataset_name", str(data), "--output_dir", str(out)])
        == 2
    )
    message = one_line(capsys)
    assert "holds conversational rows" in message and "tokenizer of tiny-llama has no chat template" in message
    assert fix in message and not out.exists()


@pytest.mark.parametrize(
    "row,problem",
    [
        ({"text": None}, "column 'text' must be a string, got NoneType"),
        ({"prompt": "x"}, "column 'completion' must be a string"),
        ({"messages": "hello"}, "column 'messages' must be a non-empty list"),
    ],
)
def test_a_malformed_sft_row_is_named_with_its_row_and_column(tmp_path, capsys, row, problem):
    key = next(iter(row))
    good = (
        [{"text": f"{i}+1={i + 1}."} for i in range(20)]
        if key == "text"
        else [{"prompt": f"{i}+1=", "completion": f"{i + 1}."} for i in range(20)]
        if key == "prompt"
        else MESSAGES
    )
    data, out = write(tmp_path / "sft.jsonl", good[:5] + [row] + good[5:]), tmp_path / "run"
    assert (
        cli_main(["sft", "--model_name_or_path", "tiny-gpt2", "--dataset_name", str(data), "--output_dir", str(out)])
        == 2
    )
    message = one_line(capsys)
    assert "[train] row 5" in message and problem in message and "drop_invalid_rows" in message
    assert not out.exists()


def test_messages_name_the_flag_as_typed_and_integers_as_integers(tmp_path, capsys, pairs_file):
    assert (
        cli_main(
            [
                "eval",
                "winrate",
                "--model",
                "tiny-gpt2",
                "--baseline",
                "tiny-gpt2",
                "--data",
                str(pairs_file),
                "--judge",
                "rule:arithmetic",
                "--num-prompts",
                "0",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 2
    )
    message = one_line(capsys)
    assert "--num-prompts: must be a whole number of at least 1, got '0'" in message
    assert "max_eval_samples" not in message and not (tmp_path / "e").exists()
    assert (
        cli_main(
            [
                "dpo",
                "--model_name_or_path",
                "tiny-gpt2",
                "--dataset_name",
                str(pairs_file),
                "--output_dir",
                str(tmp_path / "run"),
                "--max_steps",
                "0",
            ]
        )
        == 2
    )
    message = one_line(capsys)
    assert "max_steps must be > 0" in message and message.endswith("got 0")


def test_evaluations_refuse_what_they_cannot_read_in_one_line(tmp_path, capsys):
    data = write(tmp_path / "conv.jsonl", CONVERSATIONAL_PAIRS)
    for argv in (
        ["eval", "drift", "--model", "tiny-gpt2", "--original", "tiny-gpt2"],
        ["eval", "rewards", "--model", "tiny-gpt2", "--reference", "tiny-gpt2"],
        [
            "eval",
            "winrate",
            "--model",
            "tiny-gpt2",
            "--baseline",
            "tiny-gpt2",
            "--judge",
            "rule:arithmetic",
            "--chat-template",
        ],
    ):
        out = tmp_path / argv[1]
        assert cli_main([*argv, "--data", str(data), "--out", str(out)]) == 2, argv
        message = one_line(capsys)
        assert "conversational rows" in message or "has no chat template" in message, message
        assert not out.exists(), argv
