import json

import pytest

from crrelu_llm.data.preference import DataArguments, DataError, load_preference_splits
from crrelu_llm.data.sft import load_sft_splits
from crrelu_llm.errors import MalformedRowError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HH = [
    {
        "chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine {i}",
        "rejected": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away",
    }
    for i in range(10)
]


def test_hh_layout_splits_the_shared_conversation_into_the_prompt(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", HH)
    _write_jsonl(tmp_path / "test.jsonl", HH[:3])
    train, evaluation, summary = load_preference_splits(DataArguments(dataset_name=str(tmp_path)))
    assert summary["format"] == "hh" and (len(train), len(evaluation)) == (10, 3)
    row = train[0]
    assert row["prompt"] == "\n\nHuman: hi 0\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert row["chosen"] == " fine 0" and row["rejected"] == " go away"


def test_shp_layout_uses_labels_and_the_score_ratio_filter(tmp_path):
    rows = [
        {
            "history": "Why is the sky blue?",
            "human_ref_A": "Rayleigh scattering.",
            "human_ref_B": "It just is.",
            "labels": 1,
            "score_A": 30,
            "score_B": 10,
        },
        {
            "history": "Best pizza?",
            "human_ref_A": "Any.",
            "human_ref_B": "Neapolitan, for the crust.",
            "labels": 0,
            "score_A": 5,
            "score_B": 8,
        },
    ]
    file = _write_jsonl(tmp_path / "shp.jsonl", rows * 5)
    args = DataArguments(dataset_name=str(file), eval_fraction=0.2)
    train, evaluation, summary = load_preference_splits(args)
    assert summary["format"] == "shp" and len(train) + len(evaluation) == 10
    pairs = {(r["chosen"], r["rejected"]) for r in list(train) + list(evaluation)}
    assert pairs == {(" Rayleigh scattering.", " It just is."), (" Neapolitan, for the crust.", " Any.")}
    assert next(iter(train))["prompt"].startswith("\n\nHuman: ")
    filtered, _, _ = load_preference_splits(
        DataArguments(dataset_name=str(file), eval_fraction=0.2, shp_min_score_ratio=2.0)
    )
    assert {r["chosen"] for r in filtered} == {" Rayleigh scattering."}  # 8/5 < 2 is dropped


def test_ultrafeedback_conversational_rows_keep_the_last_assistant_turn(tmp_path):
    row = {
        "prompt": "Say hi",
        "chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}],
    }
    _write_jsonl(tmp_path / "train.jsonl", [row] * 4)
    args = DataArguments(
        dataset_name=str(tmp_path),
        dataset_format="ultrafeedback",
        dataset_train_split="train",
        dataset_test_split="train",
    )
    train, _, _ = load_preference_splits(args)
    assert train[0]["prompt"] == [{"role": "user", "content": "Say hi"}]
    assert train[0]["chosen"] == [{"role": "assistant", "content": "Hi!"}]


def test_parquet_in_trl_standard_format_and_sample_limits(tmp_path):
    from datasets import Dataset

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(50)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    train, evaluation, summary = load_preference_splits(
        DataArguments(
            dataset_name=str(tmp_path / "train.parquet"), max_train_samples=7, max_eval_samples=2, eval_fraction=0.1
        )
    )
    assert summary["format"] == "preference" and (len(train), len(evaluation)) == (7, 2)
    sft_train, _, _ = load_sft_splits(DataArguments(dataset_name=str(tmp_path / "train.parquet")))
    assert set(sft_train.column_names) == {"prompt", "completion"}
    assert sft_train[0]["completion"].startswith("good")


@pytest.mark.parametrize(
    "bad_row,column,problem",
    [
        ({"prompt": "q", "chosen": "a"}, "rejected", "must be a string"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "chosen", "is empty"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "must be a string"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen", "identical to rejected"),
    ],
)
def test_malformed_rows_are_named_or_dropped_and_counted(tmp_path, bad_row, column, problem, caplog):
    good = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(6)]
    file = _write_jsonl(tmp_path / "train.jsonl", good[:4] + [{**{"rejected": None}, **bad_row}] + good[4:])
    with pytest.raises(DataError) as err:
        load_preference_splits(DataArguments(dataset_name=str(file)))
    message = str(err.value)
    assert str(file) in message and "row 4" in message and f"column {column!r}" in message and problem in message
    assert isinstance(err.value, MalformedRowError) and "or set drop_invalid_rows: true" in message
    train, evaluation, _ = load_preference_splits(DataArguments(dataset_name=str(file), drop_invalid_rows=True))
    assert len(train) + len(evaluation) == 6
    assert "dropped 1 malformed row" in caplog.text


def test_missing_split_and_unknown_layout_are_explained(tmp_path):
    file = _write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="cannot tell the format"):
        load_preference_splits(DataArguments(dataset_name=str(file)))
    with pytest.raises(DataError, match="no split 'dev'"):
        load_preference_splits(
            DataArguments(dataset_name=str(file), dataset_format="preference", dataset_train_split="dev")
        )
    with pytest.raises(DataError, match="no .json, .jsonl"):
        load_preference_splits(
            DataArguments(dataset_name=str(tmp_path / "empty_dir_that_exists"))
            if (tmp_path / "empty_dir_that_exists").mkdir() is None
            else None
        )


def test_hub_layout_of_anthropic_hh_loads_from_local_gzipped_files(tmp_path):
    """Anthropic/hh-rlhf stores <subset>/train.jsonl.gz and test.jsonl.gz; the same layout on disk."""
    import gzip

    subset = tmp_path / "hh-rlhf" / "helpful-base"
    subset.mkdir(parents=True)
    for split, rows in (("train", HH), ("test", HH[:2])):
        with gzip.open(subset / f"{split}.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    train, evaluation, summary = load_preference_splits(DataArguments(dataset_name=str(tmp_path / "hh-rlhf")))
    assert (summary["format"], len(train), len(evaluation)) == ("hh", 10, 2)
    assert train[3]["chosen"] == " fine 3"


def test_truncation_follows_the_dpo_reference_code():
    from crrelu_llm.data.accounting import truncate_like_reference

    prompt, responses = list(range(10)), [[100, 101, 102], [200]]
    assert truncate_like_reference(prompt, responses, 16, 4) == (prompt, responses)  # fits: untouched
    assert truncate_like_reference(prompt, responses, 12, 4, "keep_end") == ([6, 7, 8, 9], responses)
    assert truncate_like_reference(prompt, responses, 12, 4, "keep_start") == ([0, 1, 2, 3], responses)
    long = [list(range(100, 120)), [200]]
    assert truncate_like_reference(prompt, long, 12, 4) == ([6, 7, 8, 9], [list(range(100, 108)), [200]])


def test_trainers_cut_prompts_like_the_reference_code_instead_of_dropping_them():
    """A prompt longer than max_length keeps its end (HH's last turn) and the response's start."""
    from datasets import Dataset

    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
    from crrelu_llm.training.trainers.dpo import CRReLUDPOConfig, CRReLUDPOTrainer
    from crrelu_llm.training.trainers.sft import CRReLUSFTConfig, CRReLUSFTTrainer

    tok = tiny_tokenizer()
    prompt = "\n\nHuman: " + "blah " * 10 + "\n\nAssistant:"  # 68 characters, longer than max_length
    pairs = Dataset.from_list([{"prompt": prompt, "chosen": " yes" * 10, "rejected": " no"}])
    common = {
        "output_dir": "unused",
        "max_length": 24,
        "max_prompt_length": 12,
        "use_cpu": True,
        "report_to": [],
        "bf16": False,
    }
    dpo = CRReLUDPOTrainer(
        model=tiny_causal_lm("gpt2"),
        ref_model=tiny_causal_lm("gpt2"),
        args=CRReLUDPOConfig(**common),
        train_dataset=pairs,
        processing_class=tok,
    )
    row = dpo.train_dataset[0]
    assert tok.decode(row["prompt_ids"]) == "\n\nAssistant:"
    assert tok.decode(row["chosen_ids"]) == " yes yes yes" and tok.decode(row["rejected_ids"]) == " no<eos>"
    sft_data = Dataset.from_list([{"prompt": prompt, "completion": " yes" * 10}])
    sft = CRReLUSFTTrainer(
        model=tiny_causal_lm("gpt2"), args=CRReLUSFTConfig(**common), train_dataset=sft_data, processing_class=tok
    )
    row = sft.train_dataset[0]
    assert tok.decode(row["input_ids"]) == "\n\nAssistant: yes yes yes"
    assert row["labels"][:12] == [-100] * 12 and -100 not in row["labels"][12:]
    with pytest.raises(Exception, match="max_prompt_length .* must be below max_length"):
        CRReLUDPOConfig(**{**common, "max_prompt_length": 24})


def test_shp_sft_target_is_the_best_scored_response_per_prompt(tmp_path):
    rows = [  # one post, three pairs: the best response overall wins, pairs under the ratio do not count
        {"history": "Q1", "human_ref_A": "good", "human_ref_B": "bad", "labels": 1, "score_A": 20, "score_B": 5},
        {"history": "Q1", "human_ref_A": "best", "human_ref_B": "bad", "labels": 1, "score_A": 40, "score_B": 5},
        {"history": "Q1", "human_ref_A": "close", "human_ref_B": "closer", "labels": 0, "score_A": 90, "score_B": 99},
        {"history": "Q2", "human_ref_A": "meh", "human_ref_B": "fine", "labels": 0, "score_A": 3, "score_B": 9},
    ]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "test.jsonl", rows[3:])
    args = DataArguments(dataset_name=str(tmp_path), shp_min_score_ratio=2.0, sft_target="best_scored")
    train, evaluation, summary = load_sft_splits(args)
    got = {r["prompt"]: r["completion"] for r in train}
    assert got == {"\n\nHuman: Q1\n\nAssistant:": " best", "\n\nHuman: Q2\n\nAssistant:": " fine"}
    assert len(evaluation) == 1 and summary["sft_from"] == "best-scored response per prompt"
    chosen, _, _ = load_sft_splits(DataArguments(dataset_name=str(tmp_path), shp_min_score_ratio=2.0))
    assert len(chosen) == 3  # the default: every kept pair's chosen response
    _write_jsonl(tmp_path / "hh.jsonl", HH)
    with pytest.raises(Exception, match="best_scored needs scored responses"):
        load_sft_splits(DataArguments(dataset_name=str(tmp_path / "hh.jsonl"), sft_target="best_scored"))
