"""crrelu-llm pairs: on-policy preference pairs from a model's own samples, with each judge kind."""

import json

import pytest

from crrelu_llm.cli import main as cli_main
from crrelu_llm.evaluation.judges import PairwiseLLMJudge, RuleBasedJudge
from crrelu_llm.evaluation.onpolicy import score_samples, select_pairs
from crrelu_llm.evaluation.tasks import score_arithmetic, write_task_files

from judge_server import prefers_longer


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task_files("arithmetic", tmp_path_factory.mktemp("task"), 24, 6)


def _pairs(tmp_path, task, judge, *extra):
    out = tmp_path / "pairs"
    argv = [
        "pairs",
        "tiny-gpt2",
        "--data",
        str(task),
        "--judge",
        judge,
        "--num-samples",
        "3",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "8",
        "--num-prompts",
        "8",
        "--out",
        str(out),
        *extra,
    ]
    return cli_main(argv), out


def test_the_rule_judge_keeps_the_right_sample_against_a_wrong_one():
    prompts = ["2+3=", "4+4=", "1+1="]
    samples = [["6.", "5.", "7."], ["8.", "8.", "8."], ["", "2.", ""]]
    scores = score_samples(RuleBasedJudge(score_arithmetic), prompts, samples)
    rows, counts = select_pairs(prompts, samples, scores)
    assert rows == [{"prompt": "2+3=", "chosen": "5.", "rejected": "6."}]
    assert counts["dropped_all_tied"] == 1 and counts["dropped_fewer_than_two_nonempty"] == 1
    assert counts["pairs"] == 1 and counts["score_spread"]["mean"] == 1.0


def test_a_pairwise_judge_ranks_samples_by_a_round_robin_in_both_orders(server):
    s = server(prefers_longer)
    judge = PairwiseLLMJudge(s.url, "m", backoff=0.01)
    scores = score_samples(judge, ["p"], [["a", "aaa", "aa"]])
    assert scores == [[-2.0, 2.0, 0.0]]  # 3 pairs, each asked in both orders
    assert len(s.requests) == 6


def test_pairs_with_a_reward_model_end_to_end(tmp_path, task, capsys):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from crrelu_llm.patching.tiny import tiny_tokenizer

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128, n_positions=64, num_labels=1, pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tiny_tokenizer().save_pretrained(tmp_path / "rm")
    code, out = _pairs(tmp_path, task, f"reward-model:{tmp_path / 'rm'}")
    assert code == 0
    record = json.loads((out / "_pairs.json").read_text())
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert record["counts"]["prompts"] == 8 and len(rows) == record["counts"]["pairs"] > 0
    assert record["inputs"]["settings"]["num_samples"] == 3 and record["inputs"]["judge"].startswith("reward-model:")
    samples = [json.loads(line) for line in (out / "_samples.jsonl").read_text().splitlines()]
    for row in rows:  # chosen is the best-scored sample of its prompt, rejected the worst
        s = next(x for x in samples if x["prompt"] == row["prompt"])
        assert s["scores"][s["samples"].index(row["chosen"])] == max(s["scores"])
        assert s["scores"][s["samples"].index(row["rejected"])] == min(s["scores"])
    assert len((out / "test.jsonl").read_text().splitlines()) == 6  # the held-out pairs, untouched
    assert "pairs from 8 prompts" in capsys.readouterr().out
    # the directory is preference data the trainers read
    from crrelu_llm.data.preference import DataArguments, load_preference_splits

    train, evaluation, _ = load_preference_splits(DataArguments(dataset_name=str(out)))
    assert len(train) == len(rows) and len(evaluation) == 6


def test_pairs_with_a_loopback_openai_judge_then_a_rerun_and_an_edit(tmp_path, task, server, capsys):
    s = server(prefers_longer)
    code, out = _pairs(tmp_path, task, f"openai:judge@{s.url}")
    assert code == 0 and len(s.requests) == 8 * 3 * 2  # 3 pairs per prompt, both orders
    record = json.loads((out / "_pairs.json").read_text())
    assert record["judge_name"] == "pairwise:judge" and record["counts"]["pairs"] > 0
    files = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    capsys.readouterr()
    code, _ = _pairs(tmp_path, task, f"openai:judge@{s.url}")  # the same command: nothing to do
    assert code == 0 and "nothing to do" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == files and len(s.requests) == 48
    code, _ = _pairs(tmp_path, task, f"openai:judge@{s.url}", "--temperature", "0.7")  # edited: refused
    err = capsys.readouterr().err
    assert code == 2 and "settings differ" in err and len(err.strip().splitlines()) == 1
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == files


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num-samples", "1"], "at least 2 samples"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--judge", "gpt4"], "unknown judge"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, task, capsys, extra, message):
    code, out = _pairs(tmp_path, task, "rule:arithmetic", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_no_pair_left_says_why_and_writes_nothing(tmp_path, task, capsys):
    # a random tiny model gets no sum right: every prompt's samples tie at 0
    code, out = _pairs(tmp_path, task, "rule:arithmetic")
    err = capsys.readouterr().err
    assert code == 2 and "no pair left from 8 prompts" in err and not (out / "_pairs.json").exists()
    assert not out.exists() or not any(out.iterdir())


def test_a_directory_that_is_not_a_pairs_run_is_refused(tmp_path, task, capsys):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "notes.txt").write_text("mine")
    code, _ = _pairs(tmp_path, task, "rule:arithmetic")
    assert code == 2 and "is not empty and holds no _pairs.json" in capsys.readouterr().err


def test_the_k_samples_of_a_prompt_are_drawn_in_one_generate_call():
    """Batched sampling: one generate call per batch of prompts returns every prompt's K samples."""
    from crrelu_llm.evaluation.generation import GenerationSettings, generate_samples
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

    model, calls = tiny_causal_lm("gpt2"), []
    plain = model.generate
    model.generate = lambda **kw: calls.append(kw.get("num_return_sequences")) or plain(**kw)
    settings = GenerationSettings(max_new_tokens=3, do_sample=True, batch_size=8, seed=1)
    samples = generate_samples(model, tiny_tokenizer(), [f"{a}+1=" for a in range(5)], settings, 4)
    assert calls == [4] and [len(s) for s in samples] == [4] * 5
    again = generate_samples(model, tiny_tokenizer(), [f"{a}+1=" for a in range(5)], settings, 4)
    assert again == samples  # reproducible for a seed


def test_generation_stops_at_the_models_last_position_whatever_max_new_tokens_asks():
    """A GPT-2-style model fails past its last learned position; a sample that never ends was a
    crash (IndexError in the position embedding), now it ends there."""
    from crrelu_llm.evaluation.generation import GenerationSettings, generate_samples
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

    model, tokenizer = tiny_causal_lm("gpt2", n_positions=16), tiny_tokenizer()
    settings = GenerationSettings(max_new_tokens=64, do_sample=True, seed=0)
    samples = generate_samples(model, tokenizer, ["1+1=", "12+30="], settings, 3)
    assert all(len(tokenizer(s)["input_ids"]) <= 16 for group in samples for s in group)
