"""Tests for evaluating checkpoints (evaluate.py; its CLI is also reached as sample.py --eval): pass@k against a
brute-force count, bootstrap intervals on known cases, grading per template, batching by a token budget, resumable
results, problem files in each format, and the CLI end to end on a tiny random Qwen2-shaped Hugging Face checkpoint
whose embedding is larger than its tokenizer (ids in the gap are sampled and must decode)."""
import itertools
import json
import math

import pytest
import torch

import evaluate as evaluate_mod
import sample
import tasks
from evaluate import (ResultsFile, bootstrap_ci, evaluate, grade, pass_at_k, per_problem_scores, plan_calls,
                      summarize)
from tasks import Problem
from test_sample import ByteTokenizer  # one token per character; 256 = eos, 257 = pad

QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
             r"""|\s+(?!\S)|\s+""")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB = 256 + len(SPECIALS)  # the tokenizer's ids; the model's embedding has more rows (a gap, as in Qwen2.5)


# ----------------------------------------------------------------------------- a tiny checkpoint and problem files

def write_checkpoint(path, chat_template=CHAT, record=None):
    """A random Qwen2-shaped Hugging Face dir: config.json + model.safetensors (model.save_pretrained), a
    byte-level tokenizer.json written by hand (256 bytes + specials), tokenizer_config.json, generation_config."""
    from model import ModelConfig, Transformer
    from tokenizer import bytes_to_unicode
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB + 37, dim=32, n_layers=1, n_heads=2, attn="gqa", n_kv_heads=1, head_dim=16,
                      qkv_bias=True, inter_dim=64, max_seq_len=1024, rope_interleave=False)
    Transformer(cfg).save_pretrained(str(path))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {"version": "1.0", "added_tokens": [{"id": 256 + i, "content": t, "special": True}
                                             for i, t in enumerate(SPECIALS)],
          "normalizer": None, "decoder": byte_level,
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": QWEN2_PAT}, "behavior": "Isolated", "invert": False},
              byte_level]},
          "model": {"type": "BPE", "vocab": {c: b for b, c in bytes_to_unicode().items()}, "merges": []}}
    (path / "tokenizer.json").write_text(json.dumps(tj))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    if chat_template:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [258, 256]}))
    if record is not None:
        (path / "nano_r1.json").write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("qwen2-tiny"))


ROWS = {
    "gsm8k": [{"question": "What is 2+3?", "answer": "2 + 3 = 5\n#### 5"},
              {"question": "What is 1,000 + 1?", "answer": "#### 1,001"}],
    "math": [{"problem": "Compute 1/2 + 1/2.", "solution": "It is $\\boxed{1}$.", "level": "Level 1"},
             {"problem": "Simplify 2/4.", "solution": "$\\boxed{\\frac{1}{2}}$", "level": "Level 2"}],
    "aime": [{"Problem": "Find 3 * 4.", "Answer": 12, "ID": "2024-I-1"}, {"Problem": "Find 5 * 5.", "Answer": "025"}],
}


def write_problems(tmp_path, fmt, rows=None):
    p = tmp_path / f"{fmt}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows or ROWS[fmt]))
    return p


def run_cli(args, capsys):
    """sample.main(args) -> (exit code, stdout, stderr)."""
    code = 0
    try:
        sample.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- metrics

def test_pass_at_k_matches_brute_force_over_subsets():
    """pass@k = the fraction of the C(n, k) size-k subsets of the n samples holding at least one correct one."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets)), (n, c, k)


def test_per_problem_scores_literal():
    group = [{"correct": c, "pred": p, "format": 1.0, "length": n, "truncated": t}
             for c, p, n, t in [(True, "5", 10, False), (False, "6", 20, True), (False, "6", 30, False),
                                (False, None, 40, True)]]
    s = per_problem_scores(group, 4)
    assert s["pass@1"] == 0.25 and s["cons@k"] == 0.0  # "6" wins the vote, and is wrong
    assert s["pass@2"] == pytest.approx(0.5) and s["pass@4"] == s["pass@k"] == 1.0  # 1 - C(3,2)/C(4,2) = 0.5
    assert s["length"] == 25 and s["truncated"] == 0.5


def test_bootstrap_ci_known_cases():
    assert bootstrap_ci([0.25] * 10) == (0.25, 0.25)  # no spread: a point
    assert bootstrap_ci([0.0] * 30) == (0.0, 0.0)
    # 15 of 30 problems solved: a resampled mean is Binomial(30, 1/2) / 30, whose exact 2.5% and 97.5% quantiles
    # are 10 and 20 (P(X <= 9) = 0.021, P(X <= 10) = 0.049); so the interval is [1/3, 2/3] (normal approx.
    # 0.5 +- 0.179)
    cdf = lambda x: sum(math.comb(30, i) for i in range(x + 1)) / 2 ** 30  # noqa: E731
    assert cdf(9) < 0.025 < cdf(10) and 1 - cdf(20) < 0.025 < 1 - cdf(19)
    lo, hi = bootstrap_ci([1.0] * 15 + [0.0] * 15, n_boot=20000, seed=0)
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(2 / 3)
    assert bootstrap_ci([1, 0, 1, 1], seed=3) == bootstrap_ci([1, 0, 1, 1], seed=3)  # seeded
    lo90, hi90 = bootstrap_ci([1.0] * 15 + [0.0] * 15, n_boot=20000, level=0.5)
    assert 1 / 3 < lo90 < hi90 < 2 / 3


def test_summarize_ci_per_metric():
    samples = []
    for i in range(6):  # problem i: i of 3 samples correct (capped), length 10*i
        samples += [{"bucket": "all", "correct": j < min(i, 3), "pred": str(j), "format": 1.0, "length": 10 * i,
                     "truncated": False} for j in range(3)]
    res = summarize(samples, 3, n_boot=2000, seed=0)
    assert res["pass@1"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 1 + 1 + 1) / 6)
    for m in ("pass@1", "cons@k", "pass@2", "pass@3", "format", "length", "truncated"):
        lo, hi = res["ci"][m]
        assert lo <= res[m] <= hi, m
    assert res["ci"]["format"] == (1.0, 1.0) and res["ci"]["length"][0] < 25 < res["ci"]["length"][1]


# ----------------------------------------------------------------------------- grading per template

def test_grade_per_template():
    p = Problem("Find x.", "1/2", "math", "all", {})
    assert grade(" <think> half </think> <answer> 0.5 </answer>", p, "r1-zero") == ("0.5", True, 1.0)
    assert grade(" <think> half </think> 0.5", p, "r1-zero") == (None, False, 0.0)  # no answer block: format 0
    # chat: the last \boxed{} after the reasoning; a box inside an unfinished thought is no answer
    text = "<think>\ntry \\boxed{3}\n</think>\nSo \\boxed{\\frac{1}{2}}."
    assert grade(text, p, "chat") == ("\\frac{1}{2}", True, 1.0)
    assert grade("hmm \\boxed{\\frac12} wait", p, "chat", thinks=True) == (None, False, 0.0)
    assert grade("<think>\\boxed{0.5}</think> Not sure.", p, "chat") == (None, False, 0.0)  # a box in thought only
    assert grade("ok\n</think>\n\\boxed{0.5}", p, "chat", thinks=True) == ("0.5", True, 1.0)
    assert grade("The answer is \\boxed{2}.", p, "none") == ("2", False, 1.0)
    assert grade("The answer is one half.", p, "none") == (None, False, 0.0)
    g = Problem("What is 1,000 + 1?", "1001", "gsm8k", "all", {})
    assert grade("so #### 1001", g, "none")[1] and grade("<answer>\\boxed{1,001}</answer>", g, "chat")[1]
    mul = tasks.make_problems("multiplication", 1, split="test")[0]
    assert grade(f"\\boxed{{{mul.answer}}}", mul, "none")[1]  # synthetic tasks keep their own checker


# ----------------------------------------------------------------------------- batching by a token budget

def test_plan_calls_literal():
    assert plan_calls([10, 10, 10, 10], 2, 10, 64, 80) == [([0, 1], 2), ([2, 3], 2)]  # 2 x 2 rows x 20 slots
    assert plan_calls([10, 30, 10], 2, 10, 64, 80) == [([0], 2), ([1], 2), ([2], 2)]  # longest prompt counts
    assert plan_calls([1] * 5, 2, 10, 4) == [([0, 1], 2), ([2, 3], 2), ([4], 2)]  # rows only
    assert plan_calls([50], 4, 10, 64, 120) == [([0], 2), ([0], 2)]  # one problem's samples split
    assert plan_calls([50], 3, 10, 64, 120) == [([0], 2), ([0], 1)]
    assert plan_calls([5, 50, 5], 3, 10, 2) == [([0], 2), ([0], 1), ([1], 2), ([1], 1), ([2], 2), ([2], 1)]


class ScriptModel(torch.nn.Module):
    """Every row writes the same scripted completion, then eos; records each call's cache size."""

    def __init__(self, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.lm_head = torch.nn.Identity()
        self.script, self.caches = [ord(c) for c in script] + [256], []

    def make_cache(self, batch_size, max_len):
        self.caches.append(batch_size * max_len)
        return _Cache()

    def forward(self, tokens, cache=None, pos=None, valid=None, return_hidden=False):
        B, T = tokens.shape
        if cache.length == 0:
            cache.prompt = T
        step = min(cache.length + T - cache.prompt, len(self.script) - 1)
        cache.length += T
        logits = torch.full((B, T, 258), -10.0)  # (B, T, V)
        logits[:, :, self.script[step]] = 10.0
        return logits


class _Cache:
    length = 0

    def select(self, index):
        pass


def test_evaluate_batches_by_token_budget_and_chat_grading():
    model = ScriptModel("<think>\nok\n</think>\n\\boxed{5}")
    tok = ByteTokenizer()
    problems = [Problem(q, a, "math", b, {}) for q, a, b in [("2+3?", "5", "E"), ("1+4?", "5", "E"),
                                                             ("Long question: 7-2?", "5", "H"), ("6-2?", "4", "H")]]
    prompt_fn = lambda q: q + "<think>\n"  # noqa: E731 (a template that pre-fills the think tag)
    res = evaluate(model, tok, problems, k=3, max_new_tokens=40, template="chat", prompt_fn=prompt_fn,
                   token_budget=200)
    longest = max(len(prompt_fn(p.question)) for p in problems)
    assert model.caches and max(model.caches) <= 200 and len(model.caches) > 4  # budget kept; samples split
    assert res["pass@1"] == 0.75 and res["cons@k"] == 0.75 and res["format"] == 1.0 and res["truncated"] == 0.0
    assert res["by_bucket"]["H"]["pass@1"] == 0.5 and len(res["samples"]) == 12 and longest + 40 <= 200
    assert all(len(r["samples"]) == 3 for r in res["records"])
    assert res["samples"][0]["completion"] == "<think>\nok\n</think>\n\\boxed{5}"
    model.caches = []
    evaluate(model, tok, problems, k=3, max_new_tokens=40, template="chat", prompt_fn=prompt_fn)
    assert len(model.caches) == 1  # no budget: one call of 12 rows


def test_results_file_resume_and_partial_line(tmp_path):
    model, tok = ScriptModel(" <think> x </think> <answer> 5 </answer>"), ByteTokenizer()
    problems = [Problem(f"{i}+5-{i}?", "5", "math", "all", {}) for i in range(4)]
    path = tmp_path / "r.jsonl"
    settings = {"k": 2, "template": "r1-zero"}
    evaluate(model, tok, problems[:2], k=2, max_new_tokens=60, batch_size=2, results=ResultsFile(str(path), settings))
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"settings": settings} and len(lines) == 3
    rec = json.loads(lines[1])
    assert rec["problem"] == "0+5-0?" and rec["verdicts"] == [True, True] and rec["preds"] == ["5", "5"]
    assert rec["lengths"] == [len(" <think> x </think> <answer> 5 </answer>")] * 2 and rec["truncated"] == [False] * 2
    with open(path, "a") as f:
        f.write('{"index": 2, "problem": "2+5-2?", "samp')  # killed mid-write
    model.caches = []
    res = evaluate(model, tok, problems, k=2, max_new_tokens=60, batch_size=2, results=ResultsFile(str(path), settings))
    assert len(model.caches) == 2 and res["n"] == 4 and res["pass@1"] == 1.0  # one call each for problems 2, 3
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()[1:]] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="other settings"):
        ResultsFile(str(path), {"k": 4, "template": "r1-zero"})
    other = [Problem("different", "5", "math", "all", {})] + problems[1:]
    with pytest.raises(ValueError, match="not problem 0"):
        evaluate(model, tok, other, k=2, max_new_tokens=60, results=ResultsFile(str(path), settings))


# ----------------------------------------------------------------------------- problem files

def test_problem_files_each_format_and_auto(tmp_path):
    for fmt, answers, task in [("gsm8k", ["5", "1001"], "gsm8k"), ("math", ["1", "\\frac{1}{2}"], "math"),
                               ("aime", ["12", "025"], "math")]:
        path = write_problems(tmp_path, fmt)
        for kind in (fmt, "auto"):
            ps = tasks.load_jsonl(str(path), kind=kind)
            assert [p.answer for p in ps] == answers and ps[0].task == task and ps[0].meta["format"] == fmt
    assert [p.bucket for p in tasks.load_jsonl(str(write_problems(tmp_path, "math")), "auto")] == ["L1", "L2"]
    assert tasks.detect_format({"question": "q", "answer": "7"}) == "aime"  # AIME 2025 style
    assert tasks.detect_format({"problem": "q", "solution": "s", "answer": "7"}) == "aime"  # MATH-500
    bad = write_problems(tmp_path, "bad", [{"text": "q"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: cannot tell the format"):
        tasks.load_jsonl(str(bad), "auto")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no problems"):
        tasks.load_jsonl(str(tmp_path / "empty.jsonl"), "auto")
    assert rewards_equal("025", "25")


def rewards_equal(a, b):
    import rewards
    return rewards.math_equal(a, b)


# ----------------------------------------------------------------------------- the CLI end to end

def test_cli_eval_each_format_resume_and_report(tmp_path, ckpt, capsys):
    for fmt in ("gsm8k", "math", "aime"):
        out = tmp_path / f"{fmt}-res.jsonl"
        code, stdout, err = run_cli(["--ckpt", ckpt, "--eval", "--problems", write_problems(tmp_path, fmt),
                                     "--k", 2, "--max_new_tokens", 6, "--out", out], capsys)
        assert code == 0, err
        assert "pass@1" in stdout and "cons@2" in stdout and "95% CI" in stdout and "truncated" in stdout
        records = [json.loads(x) for x in out.read_text().splitlines()]
        assert records[0]["settings"]["template"] == "r1-zero" and records[0]["settings"]["format"] == "auto"
        assert [r["answer"] for r in records[1:]] == [p.answer for p in tasks.load_jsonl(
            str(tmp_path / f"{fmt}.jsonl"), "auto")]
        assert all(len(r["samples"]) == len(r["verdicts"]) == len(r["lengths"]) == 2 for r in records[1:])
        summary = json.loads((tmp_path / f"{fmt}-res.summary.json").read_text())
        assert summary["n"] == 2 and summary["settings"]["temperature"] == 0.6 and summary["settings"]["top_p"] == 0.95
    # resume: a second run with more problems samples only the new ones, and equals one uninterrupted run
    rows = [{"problem": f"Find {i} + 1.", "answer": str(i + 1)} for i in range(4)]
    probs = write_problems(tmp_path, "aime", rows)
    common = ["--ckpt", ckpt, "--eval", "--problems", probs, "--k", 2, "--max-new-tokens", 6, "--batch_size", 2,
              "--template", "chat"]
    run_cli(common + ["--n", 2, "--out", tmp_path / "a.jsonl"], capsys)
    code, stdout, err = run_cli(common + ["--out", tmp_path / "a.jsonl"], capsys)
    assert code == 0 and "resuming, 2 done" in err
    run_cli(common + ["--out", tmp_path / "b.jsonl"], capsys)
    a, b = [(tmp_path / f).read_text() for f in ("a.jsonl", "b.jsonl")]
    assert a == b and len(a.splitlines()) == 5
    code, _, err = run_cli(common + ["--out", tmp_path / "a.jsonl", "--k", 3], capsys)
    assert code == 2 and "other settings" in err and "k=2 there, 3 here" in err


def test_cli_prompt_templates(tmp_path, ckpt, capsys):
    code, out, err = run_cli(["--ckpt", ckpt, "--prompt", "What is 2+2?", "--max_new_tokens", 5, "--seed", 1], capsys)
    assert code == 0, err
    assert out.startswith(tasks.r1_zero_prompt("What is 2+2?"))  # the R1-Zero template by default
    code, out, err = run_cli(["--ckpt", ckpt, "--prompt", "hi", "--template", "chat", "--max_new_tokens", 5], capsys)
    assert code == 0 and out.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    code, out, _ = run_cli(["--ckpt", ckpt, "--prompt", "hi", "--template", "none", "--max_new_tokens", 5], capsys)
    assert code == 0 and out.startswith("hi") and not out.startswith("hi<")


def test_cli_uses_the_recorded_task(tmp_path, capsys):
    train = {"task": "count", "buckets": "E,M", "max_new_tokens": 7, "eval_problems": 2, "seed": 5, "eval_k": 3,
             "eval_batch": 6}
    d = write_checkpoint(tmp_path / "run", record={"task": "count", "preset": "zero-tiny", "step": 40, "train": train})
    code, out, err = run_cli(["--ckpt", d, "--eval", "--out", tmp_path / "r.jsonl"], capsys)
    assert code == 0, err
    assert "task: count (recorded in" in err and out.startswith("count: 4 problems x 3 samples")
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    settings = json.loads(lines[0])["settings"]
    assert (settings["task"], settings["buckets"], settings["max_new_tokens"]) == ("count", "E,M", 7)
    held_out = tasks.make_problems("count", 4, split="test", seed=5, buckets=["E", "M"])  # what train.py held out
    assert [json.loads(x)["problem"] for x in lines[1:]] == [p.question for p in held_out]


def test_cli_errors_are_one_line_before_any_work(tmp_path, ckpt, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the checkpoint was loaded before the error")
    monkeypatch.setattr(sample, "load_checkpoint", no_load)  # both CLIs load through sample.cli_model
    run_dir = tmp_path / "smoke"
    (run_dir / "rl" / "step_000002").mkdir(parents=True)
    (run_dir / "rl" / "step_000002" / "config.json").write_text("{}")
    bare = write_checkpoint(tmp_path / "bare", chat_template=None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS["gsm8k"][0]) + "\n{oops\n")
    probs = write_problems(tmp_path, "gsm8k")
    cases = [
        (["--ckpt", run_dir, "--eval", "--task", "count"], ["is not a checkpoint directory", "rl/step_000002"]),
        (["--ckpt", tmp_path / "nope", "--eval"], ["nope: no such directory"]),
        (["--ckpt", ckpt, "--eval", "--task", "nope"], ["nope", "count", "multiplication"]),
        (["--ckpt", ckpt, "--eval", "--problems", probs, "--k", -1], ["--k -1", ">= 1"]),
        (["--ckpt", ckpt, "--eval", "--problems", probs, "--temperature", -1], ["--temperature -1.0", ">= 0"]),
        (["--ckpt", ckpt, "--eval", "--problems", probs, "--max-new-tokens", 0], ["--max_new_tokens 0", ">= 1"]),
        (["--ckpt", ckpt, "--eval", "--problems", probs, "--top_p", 0], ["--top_p 0.0", "(0, 1]"]),
        (["--ckpt", ckpt, "--eval", "--problems", tmp_path / "missing.jsonl"], ["missing.jsonl: no such file"]),
        (["--ckpt", ckpt, "--eval", "--problems", bad], ["bad.jsonl:2: invalid JSON"]),
        (["--ckpt", ckpt, "--eval", "--problems", probs, "--format", "csv"], ["csv", "gsm8k", "aime"]),
        (["--ckpt", ckpt, "--eval"], ["--problems FILE or --task", "count"]),
        (["--ckpt", ckpt], ["exactly one of --prompt TEXT or --eval"]),
        (["--eval", "--task", "count"], ["--ckpt DIR is required"]),
        (["--ckpt", bare, "--prompt", "x", "--template", "chat"], ["has no chat template", "r1-zero, none"]),
        (["--ckpt", ckpt, "--prompt", "x", "--tempreature", 1], ["unknown flag --tempreature",
                                                                 "did you mean --temperature"]),
        (["--ckpt", ckpt, "--prompt", "x", "--top_k", "many"], ["--top_k", "'many'"]),
        (["--ckpt", ckpt, "--prompt", "x", "--device", "tpu"], ["--device tpu", "cpu"]),
    ]
    for args, needles in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)
        for needle in needles:
            assert needle in err, (args, needle, err)


def test_cli_help_grouped(capsys):
    code, out, _ = run_cli(["--eval", "--help"], capsys)  # sample.py --eval --help: evaluate.py's help
    assert code == 0 and out.startswith("usage: sample.py")
    for group in ("what to run:", "problems:", "prompt:", "sampling:", "batching and output:"):
        assert group in out
    assert "--max_new_tokens" in out and "0.6, the paper's" in out and "else 8" in out and "--problems" in out
    code, out, _ = run_cli(["--help"], capsys)  # sample.py alone: one prompt; it points at evaluate.py
    assert code == 0 and "--prompt" in out and "--problems" not in out and "evaluate.py --help" in out


def test_evaluate_py_is_the_cli_sample_py_eval_delegates_to(tmp_path, ckpt, capsys):
    """python evaluate.py --ckpt DIR --problems FILE and python sample.py --ckpt DIR --eval --problems FILE are
    the same command: same settings, same samples, same report."""
    common = ["--ckpt", ckpt, "--problems", write_problems(tmp_path, "gsm8k"), "--k", 2, "--max_new_tokens", 6]
    code = 0
    try:
        evaluate_mod.main([str(a) for a in common + ["--out", tmp_path / "a.jsonl"]])
    except SystemExit as e:
        code = e.code
    direct, err = capsys.readouterr()
    assert code in (0, None), err
    code, via_sample, err = run_cli(common + ["--eval", "--out", tmp_path / "b.jsonl"], capsys)
    assert code in (0, None), err
    assert direct == via_sample and direct.startswith(str(tmp_path / "gsm8k.jsonl") + ": 2 problems x 2 samples")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert sample.evaluate is evaluate and sample.pass_at_k is pass_at_k  # the old names still work (train.py)


def test_cli_context_limit_and_gap_ids_decode(tmp_path, ckpt, capsys):
    """max_new_tokens beyond the context is a one-line error; sampling a model whose embedding is larger than the
    tokenizer (ids 263..299 have no text) runs and decodes."""
    code, _, err = run_cli(["--ckpt", ckpt, "--prompt", "hi", "--max_new_tokens", 5000], capsys)
    assert code == 2 and "leaves" in err and "valid: 1.." in err
    model, tok = sample.load_checkpoint(str(ckpt))
    assert model.cfg.vocab_size > tok.vocab_size == VOCAB
    gap = list(range(VOCAB, model.cfg.vocab_size))
    assert tok.decode(tok.encode("ok") + gap) == "ok"
    gen = sample.generate(model, [tok.encode("hi")], max_new_tokens=200, temperature=1.0, seed=0, n=4)
    [tok.decode(row.tolist()) for row in gen.tokens]  # would raise on a gap id before


def test_cli_ctrl_c_saves_and_names_the_resume_command(tmp_path, ckpt, capsys, monkeypatch):
    real, calls = evaluate_mod.generate, []

    def interrupted(*a, **k):  # Ctrl-C during the second generate() call
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(evaluate_mod, "generate", interrupted)
    rows = [{"problem": f"Find {i} + 1.", "answer": str(i + 1)} for i in range(3)]
    args = ["--ckpt", ckpt, "--eval", "--problems", write_problems(tmp_path, "aime", rows), "--k", 2,
            "--max_new_tokens", 4, "--batch_size", 2, "--out", tmp_path / "r.jsonl"]
    code, _, err = run_cli(args, capsys)
    assert code == 130 and "interrupted: 1/3 problems saved in" in err and "resume with: python sample.py" in err
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2  # header + the finished problem
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "resuming, 1 done" in err and "3 problems x 2 samples" in out


def test_cli_recorded_problem_file_and_bad_records(tmp_path, capsys):
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(5)]
    probs = write_problems(tmp_path, "gsm8k", rows)
    d = write_checkpoint(tmp_path / "run", record={"task": "multiplication", "train": {
        "problems": str(probs), "problems_kind": "gsm8k", "eval_path": "", "eval_problems": 2, "max_new_tokens": 4}})
    code, out, err = run_cli(["--ckpt", d, "--eval", "--k", 1, "--out", tmp_path / "r.jsonl"], capsys)
    assert code == 0, err
    assert "held-out file recorded in" in err and "2 problems x 1 samples" in out  # the first eval_problems lines
    code, _, err = run_cli(["--ckpt", d, "--eval", "--problems", probs, "--task", "count"], capsys)
    assert code == 2 and "not both" in err
    (d / "nano_r1.json").write_text("{broken")
    code, _, err = run_cli(["--ckpt", d, "--eval"], capsys)
    assert code == 2 and "nano_r1.json: not valid JSON" in err and len(err.splitlines()) == 1


def test_cli_results_of_other_problems_is_an_error(tmp_path, ckpt, capsys):
    out = tmp_path / "r.jsonl"
    args = ["--ckpt", ckpt, "--eval", "--k", 1, "--max_new_tokens", 3, "--out", out, "--problems"]
    assert run_cli(args + [write_problems(tmp_path, "aime")], capsys)[0] == 0
    other = write_problems(tmp_path, "aime", [{"problem": "Another one.", "answer": "1"}])
    code, _, err = run_cli(args + [other], capsys)  # same path, same settings: a different file's content
    assert code == 2 and "which is not problem 0" in err and len(err.splitlines()) == 1


def test_cli_eval_reproduces_the_training_log(tmp_path, capsys):
    """--eval on a checkpoint with its nano_r1.json gives exactly the held-out numbers train.py logged."""
    import dataclasses
    import train
    cfg = train.TrainConfig(task="count", buckets="E,M", eval_problems=2, eval_k=3, eval_batch=6, max_new_tokens=9,
                            seed=5)
    d = write_checkpoint(tmp_path / "run", record={"task": "count", "step": 1, "train": dataclasses.asdict(cfg)})
    (d / "generation_config.json").unlink()  # train.py's rollouts stop on the tokenizer's eos only
    code, _, err = run_cli(["--ckpt", d, "--eval", "--out", tmp_path / "r.jsonl"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "r.summary.json").read_text())
    model, tok = sample.load_checkpoint(str(d))
    held_out = tasks.make_problems("count", 4, split="test", seed=5, buckets=["E", "M"])  # = train.load_problems
    logged = train.evaluate(model, tok, held_out, cfg, seed=cfg.seed)
    for m in ("pass@1", "cons@k", "pass@k", "format", "length", "truncated"):
        assert ours[m] == logged[m], m
