"""Tests for distill.py: rejection sampling keeps only correct, well-formed, readable, new traces (a fake sampler
feeds it hand-written completions); the JSONL round-trips; SFT on the kept traces lowers their loss; the CLI
rejects unknown fields; distill-smoke runs end to end (given a teacher checkpoint and a traces file, so that it
stays fast: training the smoke teacher is train.py's test)."""
import json
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distill  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def cfg(**kw):
    return distill.DistillConfig(**{**distill.DISTILL_PRESETS["distill-smoke"], "k": 8, "max_new_tokens": 400,
                                    "min_tokens": 1, **kw})


def rs(problems, sampler, c, oracle=False):
    return distill.rejection_sample(problems, sampler, c.k, c.seed, distill.trace_filter(c, oracle))


def good(p, rng=None):
    return tasks.render_response(p, "L", rng or random.Random(0))


def hand_written(p):
    """Eight completions for problem p, in order: kept, kept (direct mode), duplicate of the first, wrong answer,
    malformed, truncated, looping, mixed language."""
    a, b = p.meta["a"], p.meta["b"]
    first = good(p)
    loop = f" <think> {a} * {b} : " + "carry 1 -> 2 ; " * 30 + f"</think> <answer> {p.answer} </answer>"
    mixed = f" <think> {a} * {b} 我们 计算 乘法 结果 是 {p.answer} </think> <answer> {p.answer} </answer>"
    texts = [first, f" <think> {a} * {b} = {p.answer} </think> <answer> {p.answer} </answer>",
             first.replace(" ", "  "), f" <think> {a} * {b} = 7 </think> <answer> 7 </answer>",
             f" {a} * {b} = {p.answer} <answer> {p.answer}", first, loop, mixed]
    return [{"completion": t, "length": len(t.split()), "truncated": i == 5} for i, t in enumerate(texts)]


def fake_sampler(problems, k, seed):
    assert k == 8
    return [s for p in problems for s in hand_written(p)]


def test_rejection_sampling_keeps_only_correct_readable_new_traces():
    problems = [p for p in tasks.make_problems("multiplication", 6, seed=3) if p.answer != "7"][:4]
    records, stats = rs(problems, fake_sampler, cfg())
    assert stats["samples"] == 32 and stats["kept"] == 8 and stats["problems_with_trace"] == 4
    assert stats["dropped"] == {"truncated": 4, "format": 4, "wrong": 4, "length": 0, "repetitive": 4,
                                "mixed_language": 4, "duplicate": 4, "over_cap": 0}
    for p in problems:
        mine = [r for r in records if r["question"] == p.question]
        assert [r["sample"] for r in mine] == [0, 1]
        assert mine[0]["completion"] == good(p)
        assert mine[0]["prompt"] == tasks.r1_zero_prompt(p.question) and mine[0]["answer"] == p.answer
        assert all(r["teacher_score"]["accuracy"] == 1 and r["teacher_score"]["format"] == 1 for r in mine)
    # the per-problem cap and the length limit are filters too
    records, stats = rs(problems, fake_sampler, cfg(max_per_problem=1))
    assert stats["kept"] == 4 and all(r["sample"] == 0 for r in records) and stats["dropped"]["over_cap"] == 4
    records, stats = rs(problems, fake_sampler, cfg(max_tokens=20))
    assert stats["kept"] == 4 and all(r["sample"] == 1 for r in records)
    assert stats["dropped"]["length"] == 12  # the long trace, its duplicate and the loop
    with pytest.raises(ValueError, match="sampler returned"):
        rs(problems, lambda ps, k, s: [], cfg())


def test_repeat_fraction_and_language_share():
    assert distill.repeat_fraction("a b c d e f", 2) == 0.0
    assert distill.repeat_fraction("go " * 20, 2) > 0.9
    assert distill.language_share("12 * 3 = 36 , 6 carry 3") == 1.0  # only the carry word: English
    assert distill.language_share("37 * 9 = 333") == 1.0  # no words: nothing to mix
    assert distill.language_share("we compute 我们 计算") < 0.5


def test_jsonl_round_trip(tmp_path):
    problems = [p for p in tasks.make_problems("multiplication", 5, seed=1) if p.answer != "7"][:3]
    records, _ = rs(problems, fake_sampler, cfg())
    path = str(tmp_path / "traces.jsonl")
    distill.write_jsonl(path, records)
    back = distill.read_jsonl(path)
    assert back == records and len(back) == 6
    assert [distill.record_problem(r) for r in back[::2]] == problems
    assert "我们" not in open(path, encoding="utf-8").read()  # the mixed-language trace was filtered
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="completion"):
        distill.read_jsonl(str(tmp_path / "bad.jsonl"))


def tiny_tokenizer():
    text = "".join(d for _, d in zip(range(300), tasks.corpus_stream(seed=0)))
    return Tokenizer.train([text], 300)


def test_sft_lowers_the_loss_on_kept_traces():
    tok = tiny_tokenizer()
    problems = [p for p in tasks.make_problems("multiplication", 10, seed=2, buckets=["E"]) if p.answer != "7"][:8]
    records, _ = rs(problems, fake_sampler, cfg())
    examples = distill.to_examples(records, tok)
    assert all(c[-1] == tok.eos_id and tok.decode(c[:-1]) == r["completion"] for (_, c), r in zip(examples, records))
    assert all(tok.decode(p) == r["prompt"] for (p, _), r in zip(examples, records))
    # the R1-Zero template is ~270 tokens of this tiny vocabulary: keep only its last line to stay fast on CPU
    examples = [(p[-12:], c) for p, c in examples]
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny-mla", vocab_size=tok.vocab_size, dim=32))
    tokens, target = train.sft_batch(examples, tok.pad_id)  # (B, L), (B, L-1)
    with torch.no_grad():
        before = train.sft_loss(model, tokens, target).item()
    losses = train.sft(model, examples, steps=20, batch_size=8, lr=1e-2, pad_id=tok.pad_id, log=lambda m: None)
    with torch.no_grad():
        after = train.sft_loss(model, tokens, target).item()
    assert len(losses) == 20 and after < 0.7 * before, (before, after)


def test_cli_errors_list_valid_choices():
    with pytest.raises(SystemExit, match="valid fields: .*sft_steps"):
        distill.parse_args(["--preset", "distill-smoke", "--sft_stepz=3"])
    with pytest.raises(SystemExit, match="valid presets: distill-smoke"):
        distill.parse_args(["--preset", "nope"])
    with pytest.raises(SystemExit, match="teacher_args has unknown"):
        distill.parse_args(["--preset=distill-smoke", '--teacher_args={"rl_stepz": 1}'])
    preset, c = distill.parse_args(["--preset=distill-smoke", "--k", "3", "--student_overrides={\"dim\": 16}"])
    assert preset == "distill-smoke" and c.k == 3 and c.student_overrides == {"dim": 16}
    assert c.out_dir == os.path.join("runs", "distill-smoke")


def test_distill_smoke_end_to_end(tmp_path):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    teacher = Transformer(ModelConfig.from_preset("tiny-mla", vocab_size=tok.vocab_size))
    train.save_checkpoint(str(tmp_path / "teacher"), teacher, tok=tok)
    problems = [p for p in tasks.make_problems("multiplication", 6, seed=5, buckets=["E", "M"]) if p.answer != "7"][:4]
    records, _ = rs(problems, fake_sampler, cfg())
    distill.write_jsonl(str(tmp_path / "given.jsonl"), records)
    out = tmp_path / "run"
    result = distill.main(["--preset", "distill-smoke", f"--out_dir={out}", f"--teacher={tmp_path / 'teacher'}",
                           f"--dataset={tmp_path / 'given.jsonl'}", "--sft_steps=3",
                           "--rl_max_steps=1"])
    rows = result["rows"]
    assert list(rows) == ["teacher", "student base", "distilled (SFT)", "GRPO on student"]
    assert rows["student base"]["params"] < rows["teacher"]["params"]
    assert len(rows["distilled (SFT)"]["sft_losses"]) == 3
    assert rows["distilled (SFT)"]["compute"]["trained_tokens"] > 0
    assert rows["GRPO on student"]["compute"]["steps"] == 1
    assert rows["GRPO on student"]["compute"]["sampled_tokens"] > 0
    for r in rows.values():
        assert 0 <= r["eval"]["pass@1"] <= 1 and "pass@1/E" in r["eval"] and "cons@k/M" in r["eval"]
    saved = json.load(open(out / "results.json"))
    assert saved["rows"]["GRPO on student"]["compute"]["flops"] == rows["GRPO on student"]["compute"]["flops"]
    md = (out / "results.md").read_text()
    assert "| distilled (SFT) |" in md and "| GRPO on student |" in md and "| model | E | M |" in md
    assert distill.read_jsonl(str(out / "traces.jsonl")) == records
    for sub in ("base", "distilled", "grpo"):
        assert (out / "student" / sub / "model.safetensors").exists()


def test_teacher_sampler_on_a_real_model():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny-mla", vocab_size=tok.vocab_size, dim=32)).eval()
    problems = tasks.make_problems("multiplication", 3, seed=0)
    c = cfg(k=2, max_new_tokens=8, batch_size=4)  # 2 problems per generate() call: two calls
    samples = distill.teacher_sampler(model, tok, c)(problems, 2, 0)
    assert len(samples) == 6 and all(1 <= s["length"] <= 8 for s in samples)
    assert all(s["truncated"] == (s["length"] == 8) for s in samples)
    assert samples == distill.teacher_sampler(model, tok, c)(problems, 2, 0)  # seeded
    records, stats = rs(problems, distill.teacher_sampler(model, tok, c), c)
    assert stats["samples"] == 6 and stats["kept"] == len(records) == 0  # an untrained model is never right


def test_oracle_teacher_traces_are_correct_and_kept():
    tok = tiny_tokenizer()
    problems = tasks.make_problems("multiplication", 6, seed=4, buckets=["E"])
    c = cfg(k=3, max_new_tokens=400)
    records, stats = rs(problems, distill.oracle_sampler(tok), c, oracle=True)
    assert stats["teacher_accuracy"] == 1.0 and stats["problems_with_trace"] == 6
    assert stats["kept"] + stats["dropped"]["duplicate"] == 18 and stats["kept"] > 6
    ev = distill.oracle_eval(problems, tok, cfg(max_new_tokens=400), k=2)
    assert ev["pass@1"] == 1.0 and ev["pass@1/E"] == 1.0 and ev["length"] > 10


def test_bad_trace_and_problem_files_fail_in_one_line_before_any_work(tmp_path):
    good_line = json.dumps({"prompt": "p", "completion": "c"})
    out = tmp_path / "run"
    for lines, msg in [([good_line, good_line, '{"prompt": "p", "completion": '], ":3: invalid JSON"),
                       ([good_line, json.dumps({"prompt": "p"})], ":2: a trace needs string fields 'prompt' and "
                                                                  "'completion'; got \\['prompt'\\]"),
                       ([""], ": no traces")]:
        path = tmp_path / "traces.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(SystemExit, match=f"^error: {path}{msg}"):
            distill.main(["--preset", "distill-smoke", f"--out_dir={out}", f"--dataset={path}"])
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n" + "not json\n")
    with pytest.raises(SystemExit, match=f"^error: {problems}:2: invalid JSON"):
        distill.main(["--preset", "distill-smoke", f"--out_dir={out}",
                      f'--teacher_args={{"problems": "{problems}"}}'])
    assert not out.exists()  # nothing was trained, loaded or written


def test_oracle_is_never_truncated_by_the_student_length_limit():
    tok = tiny_tokenizer()
    problems = tasks.make_problems("multiplication", 4, seed=4, buckets=["M"])
    c = cfg(k=2, max_new_tokens=8)  # a student cap far below the reference solutions' length
    records, stats = rs(problems, distill.oracle_sampler(tok), c, oracle=True)
    assert stats["dropped"]["truncated"] == 0 and stats["dropped"]["length"] == 0
    assert stats["kept"] > 0 and min(r["length"] for r in records) > 8
    assert distill.oracle_eval(problems, tok, c, k=2)["pass@1"] == 1.0
    _, real = rs(problems, distill.oracle_sampler(tok), c, oracle=False)  # a sampled teacher is capped
    assert real["kept"] == 0 and real["dropped"]["length"] == real["samples"]


def test_distill_smoke_keeps_traces_and_runs_sft(tmp_path):
    result = distill.main(["--preset", "distill-smoke", f"--out_dir={tmp_path}"])
    assert result["teacher"] == "oracle" and result["data"]["kept"] > 0
    assert len(distill.read_jsonl(str(tmp_path / "traces.jsonl"))) == result["data"]["kept"]
    sft = result["rows"]["distilled (SFT)"]
    assert len(sft["sft_losses"]) == distill.DISTILL_PRESETS["distill-smoke"]["sft_steps"]
    assert sft["compute"]["trained_tokens"] > 0
    assert result["rows"]["teacher"]["eval"]["pass@1"] == 1.0
