"""The field's prompt sets, reference outputs as the baseline, the field's judge templates and
outputs its tools read: AlpacaEval- and Arena-Hard-style evaluations end to end on a tiny model
against a judge on 127.0.0.1."""

import json
import re

import pytest

from crrelu_llm.cli import main
from crrelu_llm.evaluation.judge_templates import load_template


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

    root = tmp_path_factory.mktemp("models")
    for name, seed in (("policy", 0), ("other", 1)):
        tiny_causal_lm("gpt2", seed=seed).save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    return root


INSTRUCTIONS = ["Name a colour.", "Add 2 and 3.", "Say hello.", "Count to three.", "Name a fruit.", "Spell cat."]


def _alpaca_eval_files(tmp_path):
    prompts = tmp_path / "alpaca_eval.json"
    rows = [
        {"instruction": text, "output": "A reference answer " * (i + 1), "generator": "gpt4_turbo", "dataset": "toy"}
        for i, text in enumerate(INSTRUCTIONS)
    ]
    prompts.write_text(json.dumps(rows))
    return prompts


def _between(content: str, start: str, end: str) -> str:
    return content.split(start, 1)[1].split(end, 1)[0]


def test_an_alpaca_eval_prompt_file_with_reference_outputs_as_the_baseline(tiny_models, tmp_path, server):
    """AlpacaEval-style: its prompt file, its reference outputs as the baseline, its judge
    template (m or M), and each side's outputs in its model_outputs format, read by its loader."""
    from alpaca_eval.utils import load_or_convert_to_dataframe

    def longer_wins(content, n):  # the judge prefers the longer output, named m or M
        m = _between(content, "## Output of model m\n", "\n\n## Output of model M")
        big_m = _between(content, "## Output of model M\n", "\n\n## Task")
        return 200, {"choices": [{"message": {"content": "m" if len(m) >= len(big_m) else "M"}}]}

    s = server(longer_wins)
    prompts, out = _alpaca_eval_files(tmp_path), tmp_path / "eval"
    argv = ["eval", "winrate", "--model", str(tiny_models / "policy"), "--baseline-outputs", str(prompts)]
    argv += ["--data", str(prompts), "--judge", f"openai:judge@{s.url}", "--judge-template", "alpaca_eval"]
    assert main([*argv, "--max-new-tokens", "4", "--out", str(out)]) == 0
    (file,) = out.glob("winrate-*.json")
    result = json.loads(file.read_text())
    assert result["baseline_generator"] == "gpt4_turbo" and result["judge"] == "pairwise:judge+alpaca_eval"
    stats = result["stats"]
    assert stats["n"] == len(INSTRUCTIONS) and stats["unreadable"] == 0
    assert stats["losses"] == len(INSTRUCTIONS)  # 4 new tokens never outrun a reference answer
    assert len(s.requests) == 2 * len(INSTRUCTIONS)  # both orders
    asked = s.requests[0]["body"]["messages"][0]["content"]
    assert "## Instruction\nName a colour." in asked or "## Instruction\n" in asked
    frames = {p.name: load_or_convert_to_dataframe(str(p)) for p in out.glob("model_outputs-*.json")}
    assert len(frames) == 2
    for frame in frames.values():
        assert {"instruction", "output", "generator", "dataset"} <= set(frame.columns)
        assert list(frame["instruction"]) == INSTRUCTIONS
    generators = {frame["generator"].iloc[0] for frame in frames.values()}
    assert "gpt4_turbo" in generators and len(generators) == 2
    reference = next(f for f in frames.values() if f["generator"].iloc[0] == "gpt4_turbo")
    assert reference["output"].iloc[1] == "A reference answer A reference answer "


def test_an_arena_hard_question_file_with_a_five_level_judge(tiny_models, tmp_path, server):
    """Arena-Hard-style: question.jsonl (uid, category, turns), a baseline model, the five-level
    verdict mapped to wins, losses and ties with its strength kept; an unreadable verdict is
    counted and left out, never guessed."""
    questions = tmp_path / "question.jsonl"
    rows = [{"uid": f"q{i}", "category": "toy", "turns": [{"content": text}]} for i, text in enumerate(INSTRUCTIONS)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdicts = {0: "[[A>>B]]", 1: "[[A>B]]", 2: "[[A=B]]", 3: "[[B>A]]", 4: "[[B>>A]]", 5: "no verdict here"}

    def scripted(content, n):  # the same verdict in both orders: order-consistent only for a tie
        prompt = _between(content, "<|User Prompt|>\n", "\n\n<|Assistant A")
        return 200, {"choices": [{"message": {"content": f"My answer... {verdicts[INSTRUCTIONS.index(prompt)]}"}}]}

    s = server(scripted)
    out = tmp_path / "eval"
    argv = ["eval", "winrate", "--model", str(tiny_models / "policy"), "--baseline", str(tiny_models / "other")]
    argv += ["--data", str(questions), "--judge", f"openai:judge@{s.url}", "--judge-template", "arena_hard"]
    assert main([*argv, "--max-new-tokens", "4", "--out", str(out)]) == 0
    (file,) = out.glob("winrate-*+arena_hard-*.json")
    stats = json.loads(file.read_text())["stats"]
    # the same verdict shown in both orders flips the winner: a tie by position; A=B: a tie
    assert (stats["wins"], stats["ties"], stats["losses"], stats["unreadable"]) == (0, 5, 0, 1)
    (judgments,) = out.glob("judgments-*.jsonl")
    lines = [json.loads(line) for line in judgments.read_text().splitlines()]
    assert lines[0]["detail"]["strengths"] == ["much better", "much better"]
    assert lines[1]["detail"]["verdicts"] == ["A>B", "A>B"] and lines[2]["winner"] is None
    assert lines[5]["detail"]["unreadable"] is True
    assert s.requests[0]["body"]["max_tokens"] == load_template("arena_hard").max_tokens


def test_the_five_level_scale_and_a_template_file():
    arena = load_template("arena_hard")
    assert [arena.read(f"[[{v}]]")[0] for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A")] == ["A", "A", "tie", "B", "B"]
    assert arena.read("first [[A>B]], then on reflection [[B>>A]]") == ("B", "much better")  # the final one
    assert load_template("alpaca_eval").read("M") == ("B", None) and load_template("alpaca_eval").read("x") == (
        None,
        None,
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"instruction": "ok"}, {"output": "no instruction"}], r"row 2 has no 'instruction'"),
        ([{"uid": "q1", "turns": []}], r"row 1: 'turns' must be a list whose first entry has a 'content'"),
        ([{"prompt": "ok"}, {"prompt": ""}], r"row 2: 'prompt' must be a non-empty string"),
    ],
)
def test_a_bad_prompt_row_is_refused_in_one_line_naming_row_and_field(tiny_models, tmp_path, capsys, rows, message):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    argv = ["eval", "winrate", "--model", str(tiny_models / "policy"), "--baseline", str(tiny_models / "other")]
    assert main([*argv, "--data", str(data), "--judge", "rule:arithmetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1
    assert not out.exists()


def test_reference_outputs_must_cover_every_prompt(tiny_models, tmp_path, capsys):
    prompts = _alpaca_eval_files(tmp_path)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps([{"instruction": INSTRUCTIONS[0], "output": "x", "generator": "g"}]))
    out = tmp_path / "eval"
    argv = ["eval", "winrate", "--model", str(tiny_models / "policy"), "--baseline-outputs", str(outputs)]
    assert main([*argv, "--data", str(prompts), "--judge", "rule:arithmetic", "--out", str(out)]) == 2
    assert "has no output for 5 of 6 prompts (the first: 'Add 2 and 3.')" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_an_experiment_takes_a_prompt_set_and_reference_outputs_as_recipe_keys(tmp_path):
    """`winrate: {prompts: ..., baseline_outputs: ...}`: every DPO run is also judged against the
    reference outputs on the prompt set, and the generator's name reaches the report."""
    import yaml

    from helpers import experiment_main, small_recipe

    prompts = tmp_path / "alpaca_eval.json"
    rows = [{"instruction": f"{a}+{a}=", "output": f"{2 * a + 1}.", "generator": "wrong_adder"} for a in range(10)]
    prompts.write_text(json.dumps(rows))
    path = small_recipe(
        tmp_path,
        {"gelu": {"activation": None}, "crrelu": {}},
        evaluations={
            "winrate": {
                "judge": "rule:arithmetic",
                "num_prompts": 10,
                "max_new_tokens": 4,
                "prompts": str(prompts),
                "baseline_outputs": str(prompts),
            }
        },
    )
    out = tmp_path / "out"
    assert experiment_main(path, str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    references = [g for g in summary["win_rates"] if g["comparison"] == "vs-reference"]
    assert {g["arm"] for g in references} == {"gelu", "crrelu"}
    assert all(g["per_seed"][0]["n"] == 10 for g in references)
    assert "(outputs of wrong_adder)" in (out / "report" / "report.md").read_text()
    assert any("vs the reference outputs" in line for line in summary["reading"])
    (written,) = (out / "crrelu" / "dpo-beta0.5-seed0" / "eval").glob("model_outputs-*crrelu_dpo*.json")
    assert len(json.loads(written.read_text())) == 10
    assert yaml.safe_load(path.read_text())["evaluations"]["winrate"]["baseline_outputs"] == str(prompts)


def test_pairs_samples_for_an_alpaca_eval_or_arena_hard_prompt_set(tiny_models, tmp_path):
    from crrelu_llm.evaluation.onpolicy import _prompts_and_test

    prompts = _alpaca_eval_files(tmp_path)
    assert _prompts_and_test(str(prompts), "auto", None, 3) == (INSTRUCTIONS[:3], None)
    questions = tmp_path / "question.jsonl"
    questions.write_text(
        "".join(json.dumps({"uid": f"q{i}", "turns": [{"content": t}]}) + "\n" for i, t in enumerate(INSTRUCTIONS))
    )
    assert _prompts_and_test(str(questions), "auto", None, None) == (INSTRUCTIONS, None)


# ------------------------------------------------------------------ served generation, checked

SUMS = [f"{a}+{a + 1}=" for a in range(6)]


def _sums_file(tmp_path):
    path = tmp_path / "sums.json"
    path.write_text(json.dumps([{"instruction": p, "output": "0.", "generator": "zero"} for p in SUMS]))
    return path


@pytest.mark.slow
def test_an_experiment_generates_through_a_served_model_per_stage_from_the_recipe_key(tmp_path, capsys):
    """`winrate: {generate_with: "openai:{model}@URL"}`: each win-rate stage's model generates on the
    server under its own directory's name, after the fidelity check, and the judged outputs are
    those of local greedy generation."""
    from vllm_server import RouterServer

    from helpers import experiment_main, small_recipe

    router = RouterServer()
    winrate = {"judge": "rule:arithmetic", "num_prompts": 10, "max_new_tokens": 4}
    try:
        served = {**winrate, "generate_with": f"openai:{{model}}@{router.url}"}
        path = small_recipe(tmp_path, {"gelu": {"activation": None}}, evaluations={"winrate": served})
        out = tmp_path / "out"
        assert experiment_main(path, str(out)) == 0
    finally:
        router.close()
    dpo = out / "gelu" / "dpo-beta0.5-seed0"
    assert {r["model"] for r in router.requests} == {str(dpo)}
    assert sum(1 for r in router.requests if r.get("echo")) == 4  # the fidelity check, before generating
    (result,) = (dpo / "eval").glob("winrate-*.json")
    assert json.loads(result.read_text())["served"]["max_difference"] < 1e-4
    (generations,) = (dpo / "eval").glob("generations-*dpo*.jsonl")
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    assert rows[0]["served"] == f"openai:{dpo}@{router.url}"
    local = tmp_path / "local"
    assert main(["eval", "winrate", "--model", str(dpo), "--baseline", str(out / "gelu" / "sft"), "--data",
                 str(out / "data"), "--judge", "rule:arithmetic", "--num-prompts", "10", "--max-new-tokens", "4",
                 "--out", str(local)]) == 0  # fmt: skip
    (local_generations,) = local.glob("generations-*dpo*.jsonl")
    assert [json.loads(line)["completion"] for line in local_generations.read_text().splitlines()[1:]] == [
        r["completion"] for r in rows[1:]
    ]
    bad = {"winrate": {**winrate, "generate_with": "vllm"}}  # refused before anything runs
    assert (
        experiment_main(small_recipe(tmp_path, {"gelu": {"activation": None}}, evaluations=bad), str(tmp_path / "bad"))
        == 2
    )
    message = "evaluations.winrate.generate_with: --generate-with 'vllm': write openai:<model>@<base url>"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_served_generation_passes_its_fidelity_check_and_equals_local_greedy_generation(tiny_models, tmp_path):
    from vllm_server import CompletionServer

    from crrelu_llm.evaluation.generation import GenerationSettings, generate
    from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

    policy = str(tiny_models / "policy")
    server = CompletionServer(load_causal_lm(policy), load_tokenizer(policy))
    try:
        prompts = _sums_file(tmp_path)
        out = tmp_path / "eval"
        argv = ["eval", "winrate", "--model", policy, "--baseline-outputs", str(prompts), "--data", str(prompts)]
        argv += ["--judge", "rule:arithmetic", "--generate-with", f"openai:policy@{server.url}", "--out", str(out)]
        assert main([*argv, "--max-new-tokens", "6"]) == 0
    finally:
        server.close()
    result = json.loads(next(out.glob("winrate-*.json")).read_text())
    assert result["served"]["max_difference"] < 1e-4 and result["served"]["tokens"] > 40
    echoed = [r for r in server.requests if r.get("echo")]
    assert len(echoed) == 4 and all(r["logprobs"] == 1 for r in echoed)
    (generations,) = out.glob("generations-*policy*.jsonl")
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    assert rows[0]["served"] == f"openai:policy@{server.url}"
    local = generate(load_causal_lm(policy), load_tokenizer(policy), SUMS, GenerationSettings(max_new_tokens=6))
    assert [r["completion"] for r in rows[1:]] == local


def test_a_server_with_other_weights_is_refused_in_one_line_before_anything_is_written(tiny_models, tmp_path, capsys):
    from vllm_server import CompletionServer

    from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

    other = str(tiny_models / "other")
    server = CompletionServer(load_causal_lm(other), load_tokenizer(other))  # serves other weights
    try:
        prompts = _sums_file(tmp_path)
        out = tmp_path / "eval"
        argv = ["eval", "winrate", "--model", str(tiny_models / "policy"), "--baseline-outputs", str(prompts)]
        argv += ["--data", str(prompts), "--judge", "rule:arithmetic", "--generate-with", f"openai:m@{server.url}"]
        assert main([*argv, "--out", str(out)]) == 2
    finally:
        server.close()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crrelu-llm")]
    assert len(errors) == 1 and "does not serve this model: its log-probabilities differ" in errors[0]
    assert not out.exists()
    assert all(r.get("echo") for r in server.requests)  # nothing was generated


def test_pairs_sample_k_per_prompt_from_a_checked_server_in_one_request_each(tiny_models, tmp_path, capsys):
    """An untrained model's sums are all wrong, so every prompt's samples tie and no pair is left:
    what this checks is how the samples were asked for."""
    from vllm_server import CompletionServer

    from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

    policy = str(tiny_models / "policy")
    server = CompletionServer(load_causal_lm(policy), load_tokenizer(policy))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SUMS))
    try:
        argv = ["pairs", policy, "--data", str(data), "--judge", "rule:arithmetic", "--num-samples", "3"]
        code = main([*argv, "--generate-with", f"openai:policy@{server.url}", "--out", str(tmp_path / "pairs")])
    finally:
        server.close()
    assert code == 2 and "no pair left from 6 prompts" in capsys.readouterr().err
    echoed, sampled = [r for r in server.requests if r.get("echo")], [r for r in server.requests if not r.get("echo")]
    assert len(echoed) == 4  # the fidelity check first
    assert len(sampled) == len(SUMS) and all(r["n"] == 3 and r["temperature"] == 1.0 for r in sampled)
    assert all(r["max_tokens"] <= 128 - len(r["prompt"]) for r in sampled)  # within the model's 128 positions


def test_served_requests_are_retried_as_the_judge_s_and_a_refusal_stops_at_once():
    """One retry rule for every door to a server (crrelu_llm/evaluation/http.py): 429 waits its
    Retry-After and tries again; 404 cannot succeed and stops in one line without a second try."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from crrelu_llm.errors import EvaluationError
    from crrelu_llm.evaluation.served import ServedModel

    answers, seen = [(429, {}), (200, {"choices": [{"text": "4."}]}), (404, {"error": "no such model"})], []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = answers.pop(0)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = ServedModel(f"openai:m@http://127.0.0.1:{server.server_address[1]}/v1", backoff=5.0)
        assert served.post({"prompt": "2+2="})["choices"][0]["text"] == "4."  # Retry-After 0, not 5 s
        assert len(seen) == 2 and seen[0]["model"] == "m"
        with pytest.raises(EvaluationError, match="refused the request \\(HTTP 404"):
            served.post({"prompt": "2+2="})
        assert len(seen) == 3 and not answers
    finally:
        server.shutdown()
