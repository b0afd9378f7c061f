"""Evaluation: statistics, reward metrics vs TRL, generation, judges (incl. a real local HTTP judge), drift, report."""

import gc
import json
import shutil
import time

import pytest
import torch
from datasets import Dataset

import crrelu_llm
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import EvaluationError
from crrelu_llm.evaluation.generation import GenerationSettings, generate
from crrelu_llm.evaluation.judges import JudgeError, PairwiseLLMJudge, RewardModelJudge, make_judge
from crrelu_llm.evaluation.scoring import drift, preference_logps, reward_metrics
from crrelu_llm.evaluation.tasks import generate_task_data, score_arithmetic, score_repeat, write_task_files
from crrelu_llm.evaluation.win_rates import win_rate
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
from crrelu_llm.stats import paired_permutation_test, sign_test, wilson_interval

from judge_server import answer as _answer
from judge_server import prefers_longer as _prefers_longer

# --------------------------------------------------------------------------- statistics


def test_wilson_interval_and_exact_sign_test_against_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert sign_test(9, 1) == pytest.approx(22 / 1024)  # 2 * (1 + 10) / 2**10
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert paired_permutation_test([1, 2, 3], [0, 1, 2]) == pytest.approx(2 / 8)


def test_win_rate_counts_ties_as_half_and_reports_lengths():
    w = win_rate([0, 0, 1, None], ["aa", "aaaa", "a", "a"], ["b", "b", "bbb", "b"], [True, True, True, False])
    assert (w.wins, w.ties, w.losses, w.n) == (2, 1, 1, 4)
    assert w.win_rate == pytest.approx(2.5 / 4) and w.position_consistency == pytest.approx(0.75)
    assert w.length_model["mean"] == 2.0 and w.length_baseline["max"] == 3


# --------------------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def pairs():
    return Dataset.from_list(generate_task_data("arithmetic", 16, seed=3))


def _trained_policy():
    model = tiny_causal_lm("gpt2", seed=0)
    crrelu_llm.patch_model(model)
    with torch.no_grad():  # a policy that differs from its reference
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05, alpha=1.0)
    return model


def test_reward_metrics_agree_with_trl_evaluate(pairs):
    from trl import DPOConfig, DPOTrainer

    policy, reference, tokenizer = _trained_policy(), tiny_causal_lm("gpt2", seed=0), tiny_tokenizer()
    crrelu_llm.patch_model(reference)
    ours = reward_metrics(
        preference_logps(policy, reference, tokenizer, pairs, max_length=64, batch_size=4), [0.1, 0.5]
    )
    args = DPOConfig(
        output_dir="/tmp/crrelu-test-eval",
        per_device_eval_batch_size=4,
        max_length=64,
        report_to=[],
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        beta=0.5,
    )
    trl_metrics = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=pairs,
        eval_dataset=pairs,
        processing_class=tokenizer,
    ).evaluate()
    b = ours["margins_per_evaluation_beta"][1]
    assert b["beta"] == 0.5 and ours["n"] == 16
    assert ours["accuracy"] == pytest.approx(trl_metrics["eval_rewards/accuracies"], abs=1e-6)
    assert b["margin"] == pytest.approx(trl_metrics["eval_rewards/margins"], rel=1e-4, abs=1e-6)
    assert b["chosen_reward"] == pytest.approx(trl_metrics["eval_rewards/chosen"], rel=1e-4, abs=1e-6)
    assert ours["margins_per_evaluation_beta"][0]["margin"] == pytest.approx(b["margin"] / 5, rel=1e-6)
    lo, hi = ours["accuracy_interval"]
    assert lo <= ours["accuracy"] <= hi
    # one accuracy: for a fixed policy and reference, the evaluation beta cannot change it
    args.beta = 0.1
    again = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=pairs,
        eval_dataset=pairs,
        processing_class=tokenizer,
    ).evaluate()
    assert again["eval_rewards/accuracies"] == pytest.approx(ours["accuracy"], abs=1e-6)


def test_policy_equal_to_reference_ties_everywhere_and_is_not_called_wrong(pairs):
    model = tiny_causal_lm("gpt2")
    result = reward_metrics(preference_logps(model, tiny_causal_lm("gpt2"), tiny_tokenizer(), pairs, 64, 4), [0.1])
    assert (result["accuracy"], result["ties"], result["accuracy_ties_half"]) == (0.0, 1.0, 0.5)


def test_empty_data_and_mismatched_tokenizer_are_refused(pairs):
    model = tiny_causal_lm("gpt2")
    with pytest.raises(EvaluationError, match="empty"):
        preference_logps(model, model, tiny_tokenizer(), pairs.select([]), 64, 4)
    small = tiny_causal_lm("gpt2", vocab_size=50)
    with pytest.raises(EvaluationError, match="does not belong to this model"):
        preference_logps(small, small, tiny_tokenizer(), pairs, 64, 4)


# --------------------------------------------------------------------------- generation and drift


def test_generation_is_batched_and_reproducible():
    model, tokenizer = tiny_causal_lm("gpt2"), tiny_tokenizer()
    prompts = ["1+1=", "22+3=", "Write a 3 times:"]
    greedy = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=5, batch_size=2))
    assert len(greedy) == 3 and greedy == generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=5))
    sampled = GenerationSettings(max_new_tokens=5, do_sample=True, seed=7, batch_size=2)
    assert generate(model, tokenizer, prompts, sampled) == generate(model, tokenizer, prompts, sampled)
    with pytest.raises(EvaluationError, match="no prompts"):
        generate(model, tokenizer, [], sampled)


def test_drift_is_zero_against_itself_and_positive_after_the_swap():
    tokenizer, pairs = tiny_tokenizer(), [("1+2=", "3."), ("Write b 2 times:", " bb."), ("40+2=", "42.")]
    original = tiny_causal_lm("gpt2")
    same = drift(original, tiny_causal_lm("gpt2"), tokenizer, pairs)
    assert same["kl_patched_original"] == pytest.approx(0.0, abs=1e-6)
    assert same["perplexity_patched"] == pytest.approx(same["perplexity_original"])
    patched = tiny_causal_lm("gpt2")
    crrelu_llm.patch_model(patched)
    moved = drift(patched, original, tokenizer, pairs)
    assert moved["kl_patched_original"] > 1e-4
    # only completion tokens are scored: prompts are context (a random question is unpredictable by design)
    assert moved["tokens"] == sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs)
    longer_prompts = drift(patched, original, tokenizer, [("9" * 10 + p, c) for p, c in pairs])
    assert longer_prompts["tokens"] == moved["tokens"]


# --------------------------------------------------------------------------- judges


def test_rule_judge_and_task_scorers():
    assert score_arithmetic("12+7=", "19.") == 1.0 and score_arithmetic("12+7=", " 18") == 0.0
    assert score_repeat("Write x 3 times:", "xxx.") == 1.0 and score_repeat("Write x 3 times:", "xx") == 0.0
    judge = make_judge("rule:arithmetic")
    outcomes = judge.judge(["1+1=", "2+2=", "3+3="], [("2.", "3."), ("5", "4"), ("7", "8")])
    assert [o.winner for o in outcomes] == [0, 1, None]
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("gpt4")


def test_reward_model_judge_scores_each_response_alone():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128, n_positions=64, num_labels=1, pad_token_id=0)
    judge = RewardModelJudge(model=GPT2ForSequenceClassification(config), tokenizer=tiny_tokenizer(), batch_size=2)
    prompts = ["1+1=", "2+2=", "3+3="]
    pairs_ = [("2.", "3."), ("4.", "5!!"), ("6", "6")]
    forward = judge.judge(prompts, pairs_)
    backward = judge.judge(prompts, [(b, a) for a, b in pairs_])
    for f, b in zip(forward, backward):
        assert f.detail["scores"] == pytest.approx(b.detail["scores"][::-1])  # order cannot matter
        assert f.winner == ({0: 1, 1: 0, None: None}[b.winner])
    assert forward[2].winner is None


def test_a_reward_model_with_a_chat_template_reads_the_conversation_rendered_by_it():
    """Modern reward models are trained on chat-formatted conversations: the judge renders the
    prompt and the response with the reward model's own template, not as a plain text pair."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128, n_positions=128, num_labels=1, pad_token_id=0)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    model, seen = GPT2ForSequenceClassification(config), []
    plain = model.forward
    model.forward = lambda input_ids=None, **kw: seen.append(input_ids) or plain(input_ids=input_ids, **kw)
    judge = RewardModelJudge(model=model, tokenizer=tokenizer, batch_size=2)
    judge.scores(["1+1="], ["2."])
    assert tokenizer.decode(seen[0][0], skip_special_tokens=True) == "<user>1+1=\n<assistant>2.\n"
    assert judge.texts(["1+1="], ["2."]) == (["<user>1+1=\n<assistant>2.\n"], None)
    tokenizer.chat_template = None
    assert judge.texts(["1+1="], ["2."]) == (["1+1="], ["2."])  # no template: the plain text pair


def test_pairwise_judge_asks_both_orders_caches_and_never_stores_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
    s = server(_prefers_longer)
    cache = tmp_path / "cache.jsonl"
    judge = PairwiseLLMJudge(s.url, "judge-model", api_key_env="JUDGE_KEY", cache_path=cache, backoff=0.01)
    outcomes = judge.judge(["p1", "p2"], [("long answer", "short"), ("x", "longer one")])
    assert [o.winner for o in outcomes] == [0, 1] and all(o.consistent for o in outcomes)
    assert len(s.requests) == 4 and {r["auth"] for r in s.requests} == {"Bearer sk-secret-123"}
    assert "sk-secret" not in cache.read_text()
    # a new judge on the same cache (an interrupted run resumed) asks nothing again
    again = PairwiseLLMJudge(s.url, "judge-model", api_key_env="JUDGE_KEY", cache_path=cache, backoff=0.01)
    assert [o.winner for o in again.judge(["p1", "p2"], [("long answer", "short"), ("x", "longer one")])] == [0, 1]
    assert len(s.requests) == 4


def test_position_bias_becomes_ties_and_low_consistency(server):
    s = server(lambda content, n: _answer("A"))
    outcomes = PairwiseLLMJudge(s.url, "m", backoff=0.01).judge(["p"] * 3, [("a", "b"), ("c", "d"), ("e", "f")])
    assert [o.winner for o in outcomes] == [None] * 3 and not any(o.consistent for o in outcomes)
    stats = win_rate([o.winner for o in outcomes], ["a"] * 3, ["b"] * 3, [o.consistent for o in outcomes])
    assert stats.position_consistency == 0.0 and stats.win_rate == 0.5


def test_failing_endpoint_is_retried_with_backoff(server):
    s = server(lambda content, n: (500, {"error": "busy"}) if n <= 2 else _answer("B"))
    outcomes = PairwiseLLMJudge(s.url, "m", backoff=0.01).judge(["p"], [("a", "b")])
    assert len(s.requests) == 4 and outcomes[0].winner is None  # B then B: order-dependent, a tie


def test_garbage_and_silent_endpoints_end_with_a_clear_error_keeping_the_cache(server, tmp_path):
    s = server(lambda content, n: _answer("A") if n <= 2 else (200, "not json at all"))
    cache = tmp_path / "cache.jsonl"
    judge = PairwiseLLMJudge(s.url, "m", cache_path=cache, max_retries=2, backoff=0.01)
    with pytest.raises(JudgeError, match=r"no usable verdict after 3 tries .* 2 verdicts so far are cached"):
        judge.judge(["p1", "p2"], [("a", "b"), ("c", "d")])
    assert len(cache.read_text().splitlines()) == 2
    silent = server(lambda content, n: (None, None))
    with pytest.raises(JudgeError, match="no usable verdict"):
        PairwiseLLMJudge(silent.url, "m", max_retries=1, backoff=0.01, timeout=0.2).judge(["p"], [("a", "b")])


def test_judge_keeps_requests_in_flight(server):
    """Against an endpoint that answers after 50 ms, 200 pairs (400 requests) take at most a
    fifth of the time one request at a time takes (measured on 40 pairs, scaled by 5)."""

    def slow(content, n):
        time.sleep(0.05)
        return _prefers_longer(content, n)

    s = server(slow)
    prompts = [f"p{i}" for i in range(200)]
    pairs = [(f"answer {i}", "x" * (i % 13)) for i in range(200)]
    # this process holds every earlier test's objects: a full garbage collection in the middle of
    # the timed part would walk them all (and stall the 16 threads at work), so collect first and
    # set them aside (gc.freeze) while timing
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        PairwiseLLMJudge(s.url, "m", max_concurrency=1, backoff=0.01).judge(prompts[:40], pairs[:40])
        one_at_a_time = (time.perf_counter() - start) * 5
        start = time.perf_counter()
        outcomes = PairwiseLLMJudge(s.url, "m", backoff=0.01).judge(prompts, pairs)  # default: 8 in flight
        in_flight = time.perf_counter() - start
    finally:
        gc.unfreeze()
    assert len(s.requests) == 80 + 400 and len(outcomes) == 200
    assert in_flight <= one_at_a_time / 5, (in_flight, one_at_a_time)


def test_judge_honours_retry_after_and_never_retries_what_cannot_succeed(server):
    busy = server(lambda content, n: (429, {"error": "slow down"}, {"Retry-After": "0.4"}) if n == 1 else _answer("A"))
    PairwiseLLMJudge(busy.url, "m", max_concurrency=1, backoff=0.001).judge(["p"], [("a", "b")])
    assert len(busy.requests) == 3 and busy.requests[1]["time"] - busy.requests[0]["time"] >= 0.4
    for status in (401, 403, 404):
        refusing = server(lambda content, n, status=status: (status, {"error": "no"}))
        with pytest.raises(JudgeError, match=f"refused the request \\(HTTP {status}.*retrying cannot help"):
            PairwiseLLMJudge(refusing.url, "m", max_concurrency=1, backoff=0.001).judge(["p"], [("a", "b")])
        assert len(refusing.requests) == 1  # asked once, not max_retries + 1 times


# --------------------------------------------------------------------------- CLI and report


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task_files("arithmetic", tmp_path_factory.mktemp("task"), 40, 12)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, task_dir):
    from crrelu_llm.training.train import parse_recipe, run

    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for arm, activation in (("gelu", None), ("crrelu", "crrelu")):
        for seed in (0, 1):
            out = root / f"{arm}-seed{seed}"
            argv = [
                "--model_name_or_path",
                "tiny-gpt2",
                "--dataset_name",
                str(task_dir),
                "--output_dir",
                str(out),
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "4",
                "--per_device_eval_batch_size",
                "4",
                "--learning_rate",
                "1e-3",
                "--logging_steps",
                "1",
                "--save_strategy",
                "no",
                "--bf16",
                "false",
                "--use_cpu",
                "true",
                "--gradient_checkpointing",
                "false",
                "--max_length",
                "32",
                "--seed",
                str(seed),
                "--report_to",
                "none",
            ]
            if activation is None:
                argv += ["--activation", "none"]
            run("dpo", *parse_recipe("dpo", argv))
            dirs.append(out)
    return dirs


def test_eval_commands_write_their_outputs_and_compare_reports_them(two_runs, task_dir, tmp_path, capsys, caplog):
    gelu0, gelu1, crrelu0, crrelu1 = two_runs
    assert (
        cli_main(
            [
                "eval",
                "rewards",
                "--model",
                str(crrelu0),
                "--reference",
                "tiny-gpt2",
                "--data",
                str(task_dir),
                "--beta",
                "0.1",
                "0.5",
                "--batch-size",
                "4",
                "--max-length",
                "32",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "eval",
                "winrate",
                "--model",
                str(crrelu0),
                "--baseline",
                str(gelu0),
                "--data",
                str(task_dir),
                "--judge",
                "rule:arithmetic",
                "--num-prompts",
                "6",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "eval",
                "drift",
                "--model",
                str(crrelu0),
                "--original",
                "tiny-gpt2",
                "--data",
                str(task_dir),
                "--max-samples",
                "6",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "reward accuracy" in out and "W/T/L" in out and "KL(patched || original)" in out
    for name in ("rewards.json", "drift.json"):
        assert (crrelu0 / "eval" / name).exists()
    assert len(list((crrelu0 / "eval").glob("winrate-rule_arithmetic-vs-*gelu-seed0.json"))) == 1
    winrate = json.loads(next((crrelu0 / "eval").glob("winrate-rule_arithmetic-vs-*gelu-seed0.json")).read_text())
    lc = winrate["stats"]["length_controlled"]  # beside the raw rate; 6 prompts of 4 tokens each give no fit
    assert (
        lc["n"] == 6
        and lc["value"] is None
        and ("decisive pairs" in lc["undefined"] or "no variation" in lc["undefined"])
    )
    assert "length-controlled: undefined" in out
    # a second winrate run reuses the saved generations (and says so in its log)
    caplog.set_level("INFO", logger="crrelu_llm")
    assert (
        cli_main(
            [
                "eval",
                "winrate",
                "--model",
                str(crrelu0),
                "--baseline",
                str(gelu0),
                "--data",
                str(task_dir),
                "--judge",
                "rule:arithmetic",
                "--num-prompts",
                "6",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert caplog.text.count("reusing") == 2

    report_dir = tmp_path / "report"
    assert cli_main(["compare", str(gelu0), str(gelu1), str(crrelu0), str(crrelu1), "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["arms"]) == {"unpatched beta=0.1", "crrelu beta=0.1"}  # what the runs record, not their names
    assert len(report["arms"]["crrelu beta=0.1"]["runs"]) == 2 and report["paired_tests"][0]["pairs"] == 2
    crrelu_arm = report["arms"]["crrelu beta=0.1"]
    assert crrelu_arm["rewards"][0]["from"] == str(crrelu0 / "eval" / "rewards.json")
    stored = json.loads((crrelu0 / "eval" / "rewards.json").read_text())
    assert crrelu_arm["rewards"][0]["accuracy"] == stored["accuracy"]  # every number traceable to its file
    assert crrelu_arm["rewards"][0]["margins_per_evaluation_beta"] == stored["margins_per_evaluation_beta"]
    finals = [json.loads((d / "final_metrics.json").read_text())["eval_rewards/accuracies"] for d in (crrelu0, crrelu1)]
    assert crrelu_arm["trl_eval_reward_accuracy"]["values"] == finals
    assert "TRL's" in report["paired_tests"][0]["metric"]  # ours was evaluated for one run only
    assert set(report["plots"]) == {"training_curves.png", "epsilon.png", "reward_accuracy.png", "win_rates.png"}
    for plot in report["plots"]:
        assert (report_dir / plot).stat().st_size > 1000
    md = (report_dir / "report.md").read_text()
    assert "Paired test over seeds" in md and "Wilson" in md and f"`{crrelu0 / 'eval' / 'rewards.json'}`" in md


def test_winrate_says_when_the_split_has_fewer_prompts_than_asked(two_runs, task_dir, tmp_path, capsys):
    """--num-prompts 50 on a held-out split of 12: the result and the command say so."""
    gelu0, _, crrelu0, _ = two_runs
    argv = [
        "eval",
        "winrate",
        "--model",
        str(crrelu0),
        "--baseline",
        str(gelu0),
        "--data",
        str(task_dir),
        "--judge",
        "rule:arithmetic",
        "--num-prompts",
        "50",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: win rate: 12 prompts evaluated, not the 50 asked for" in out
    result = json.loads(next(tmp_path.glob("winrate-*.json")).read_text())
    assert result["stats"]["n"] == 12 and len(result["stats"]["scores"]) == 12
    assert result["warnings"][0].startswith("win rate: 12 prompts evaluated")
    lo, hi = result["stats"]["interval"]
    assert ((hi - lo) / 2 > 0.10) == any("interval is +-" in w for w in result["warnings"])


def test_compare_groups_by_what_runs_record_and_never_pools_different_recipes(two_runs, tmp_path, capsys):
    gelu0, gelu1, crrelu0, crrelu1 = two_runs
    # directory names that suggest one arm do not make one: the recorded activation does
    renamed = tmp_path / "x"
    for i, run in enumerate((gelu0, crrelu0)):
        shutil.copytree(run, renamed / f"arm-seed{i}")
    assert (
        cli_main(["compare", str(renamed / "arm-seed0"), str(renamed / "arm-seed1"), "--out", str(tmp_path / "r1")])
        == 0
    )
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert set(report["arms"]) == {"unpatched beta=0.1", "crrelu beta=0.1"}
    # an explicit label cannot pool runs that differ in more than the seed
    assert cli_main(["compare", f"same={gelu0}", f"same={crrelu0}", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "arm 'same' would pool" in err and "activation (None vs 'crrelu')" in err and "only seeds" in err
    assert not (tmp_path / "r2").exists()
    assert cli_main(["compare", f"same={crrelu0}", f"same={crrelu1}", "--out", str(tmp_path / "r3")]) == 0


def test_bad_eval_inputs_end_with_a_clear_message(task_dir, tmp_path, server, capsys, monkeypatch):
    import functools

    # the silent judge below is retried with the default backoff (1 + 2 + 4 + 8 s of sleeping);
    # the message is what this test is about, so the waits are made short
    monkeypatch.setattr(PairwiseLLMJudge, "__init__", functools.partialmethod(PairwiseLLMJudge.__init__, backoff=0.01))
    assert (
        cli_main(
            [
                "eval",
                "rewards",
                "--model",
                str(tmp_path / "missing"),
                "--reference",
                "tiny-gpt2",
                "--data",
                str(task_dir),
            ]
        )
        == 2
    )
    assert "no such local directory" in capsys.readouterr().err
    other = tmp_path / "other-tok"
    tiny_causal_lm("gpt2").save_pretrained(other)
    tok = tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    assert (
        cli_main(["eval", "rewards", "--model", str(other), "--reference", "tiny-gpt2", "--data", str(task_dir)]) == 2
    )
    assert "tokenizers of" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(["eval", "rewards", "--model", "tiny-gpt2", "--reference", "tiny-gpt2", "--data", str(empty)]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err
    silent = server(lambda content, n: (None, None))
    out = tmp_path / "winrate"
    code = cli_main(
        [
            "eval",
            "winrate",
            "--model",
            "tiny-gpt2",
            "--baseline",
            "tiny-llama",
            "--data",
            str(task_dir),
            "--judge",
            f"openai:m@{silent.url}",
            "--num-prompts",
            "2",
            "--max-new-tokens",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "no usable verdict" in capsys.readouterr().err
    assert len(list(out.glob("generations-*.jsonl"))) == 2  # what was computed is kept
