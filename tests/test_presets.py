"""Tests for the R1-Zero presets of train.py: zero-mini and zero-small are one recipe (same task, corpus, template and
rewards, only sizes differ); each response cap holds the long and long+verify modes of every bucket, measured in
tokens of the preset's own tokenizer; zero-small's real model and corpus run one pretraining step and one RL step."""
import dataclasses
import random

import pytest

import tasks
import train
from tokenizer import Tokenizer

RECIPE = ("task", "corpus_mix", "buckets", "clip_low", "clip_high", "beta", "std_norm", "token_level", "const_norm",
          "drop_truncated", "rollout_temperature")


def preset(name: str) -> train.TrainConfig:
    return train.TrainConfig(**train.TRAIN_PRESETS[name])


def test_zero_mini_and_zero_small_are_one_recipe():
    mini, small = preset("zero-mini"), preset("zero-small")
    for k in RECIPE:
        assert getattr(mini, k) == getattr(small, k), k
    assert mini.task == "addition" and tasks.BUCKETS["addition"] == ["E", "M", "H", "VH"]
    modes = mini.corpus_mix["dialogue_modes"]
    assert modes["LV"] > 0 and modes["L"] > 0 and modes["L"] + modes["LV"] < 0.5  # thinking: a minority before RL


def mode_lengths(tok: Tokenizer, task: str, bucket: str, mode: str, slip_rate: float, n: int = 150) -> list[int]:
    """Token lengths of well-formed completions of one mode for n problems of a bucket (the corpus generator)."""
    rng = random.Random(0)
    return sorted(len(tok.encode(f" <think> {tasks.think_text(p, mode, rng, slip_rate)} </think> <answer> {p.answer} "
                                 f"</answer>"))
                  for p in tasks.make_problems(task, n, seed=0, buckets=[bucket]))


@pytest.mark.parametrize("name", ["zero-mini", "zero-small"])
def test_response_cap_holds_long_and_verify_modes(name):
    """The cap must hold the longest LV answer, slip and redo included (every LV trace forced to slip), with 10%
    to spare: a truncated answer is masked, so RL could never reward a mode the cap cuts off."""
    cfg = preset(name)
    tok = Tokenizer.train([train.corpus_text(cfg.seed + 12345, 1.0, cfg.corpus_mix)], cfg.vocab_size)
    longest = {}
    for b in cfg.buckets.split(","):
        longest[b] = max(mode_lengths(tok, cfg.task, b, "LV", slip_rate=1.0)[-1],
                         mode_lengths(tok, cfg.task, b, "L", slip_rate=0.0)[-1])
        assert 1.1 * longest[b] <= cfg.max_new_tokens, (name, b, longest[b], cfg.max_new_tokens)
    # the long mode's length grows with difficulty: the room RL has to make thinking longer on harder problems
    assert longest["E"] < longest["M"] < longest["H"] < longest["VH"]
    med_l = {b: mode_lengths(tok, cfg.task, b, "L", 0.0)[75] for b in ("E", "VH")}
    med_d = {b: mode_lengths(tok, cfg.task, b, "D", 0.0)[75] for b in ("E", "VH")}
    assert med_l["VH"] > 2 * med_l["E"] and med_l["VH"] > 3 * med_d["VH"]


def test_zero_small_real_size_one_pretraining_and_one_rl_step():
    """zero-small's real model (its preset's model, vocabulary and corpus mix) through train.py's pretraining step
    and one GRPO step (rollouts, rewards, rl_step) with tiny batches, so its code path runs at its real size."""
    import torch

    import grpo
    cfg = preset("zero-small")
    cfg.batch_size, cfg.seq_len, cfg.group_size, cfg.max_new_tokens, cfg.micro_batch = 2, 64, 2, 8, 4
    tok = Tokenizer.train([train.corpus_text(cfg.seed + 12345, 0.3, cfg.corpus_mix)], cfg.vocab_size)
    torch.manual_seed(0)
    model = train.Transformer(train.model_config(cfg, tok))
    assert train.mcfg_params(model.cfg)[0] > 20e6  # the real size (24M), not a shrunk stand-in
    opt = train.make_optimizer(model, cfg.lr, cfg.weight_decay)
    batch, learn = train.pretrain_batch(cfg, tok, step=0)  # (B, T+1), (B, T) from zero-small's corpus
    assert batch.shape == (2, 65) and learn.shape == (2, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train.pretrain_step(model, opt, batch, lr=cfg.lr, learn=learn)
    assert 3 < loss < 12  # about ln(vocab) for a fresh model
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    problems = tasks.make_problems(cfg.task, 2, seed=0, buckets=["VH"])
    prompts, gen, texts = train.rollout(model, tok, problems, cfg, seed=0, temperature=1.0, group_size=cfg.group_size)
    scores = train.rule_rewards(texts, [problems[r // cfg.group_size] for r in range(len(texts))])
    assert len(texts) == 4 and all(0 < int(n) <= cfg.max_new_tokens for n in gen.lengths)
    rollouts = train.build_rollouts(prompts, gen, scores, cfg.group_size, tok.pad_id)
    rollouts["rewards"] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # a spread, so the step has a gradient
    rollouts["truncated"][:] = False
    gcfg = train.grpo_config(cfg)
    rl_opt = train.make_optimizer(model, cfg.rl_lr, 0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert cfg.beta > 0  # the preset's KL term: the step runs with its frozen reference, as train.stage_rl does
    ref = train.distributed.frozen_copy(model)
    diag = grpo.rl_step(model.train(), rl_opt, rollouts, gcfg, ref_model=ref)
    assert diag["grad_norm"] > 0 and abs(diag["ratio"] - 1) < 1e-4 and abs(diag["kl"]) < 1e-4  # policy == ref
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def load_doc_script(name: str):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "docs" / name
    spec = importlib.util.spec_from_file_location(name.replace("-", "_").removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_small_projection_runs_on_the_preset_and_stays_under_8_minutes():
    """The README's projected H200 time comes from this function on the preset as it is (eval_batch 0 = one
    sampler call per evaluation, which once divided by zero here)."""
    proj = load_doc_script("zero-mini-projection.py")
    cfg = preset("zero-small")
    sec = proj.project(cfg)["seconds"]
    assert 60 < sec["total"] < 8 * 60
    assert proj.project(cfg, decode_step_s=2e-3, batch_build_s=0.028)["seconds"]["total"] < 8 * 60
    cfg.eval_batch = 256  # smaller sampler calls: more decode steps, never fewer
    assert proj.project(cfg)["seconds"]["eval"] > sec["eval"]


def test_zero_mini_checks_reads_verdicts_right_on_the_corpus_own_lv_traces():
    """zero-mini-checks.py's column reader against LV traces whose truth is known: every slip the generator injects
    is read as a slip the check caught (and rewrote right), every other column as a right fact said ok."""
    checks = load_doc_script("zero-mini-checks.py")
    rng = random.Random(3)
    total = {}
    for p in tasks.make_problems("addition", 200, seed=1, buckets=["M", "H", "VH"]):
        slipped = tasks.think_text(p, "LV", rng, slip_rate=1.0)
        clean = tasks.think_text(p, "LV", rng, slip_rate=0.0)
        for key, text in (("slipped", slipped), ("clean", clean)):
            c = checks.read_columns(text)
            total[key] = {k: total.get(key, {}).get(k, 0) + v for k, v in c.items()}
    assert total["slipped"][("slip", "wrong")] == 200 == total["slipped"]["rewrite right"]
    assert ("right", "wrong") not in total["slipped"] and ("slip", "ok") not in total["slipped"]
    assert set(total["clean"]) == {("right", "ok")} and total["clean"][("right", "ok")] > 400


def test_zero_mini_masked_is_zero_mini_clean_with_the_masked_slip_corpus():
    """The experiment differs from zero-mini-clean in its corpus only, and that corpus masks slips per column."""
    a, b = preset("zero-mini-clean"), preset("zero-mini-masked")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff == {"corpus_mix", "preset"} or diff == {"corpus_mix"}
    assert b.corpus_mix == {**a.corpus_mix, "slip_rate": 0.3, "mask_slips": 1}


def test_zero_mini_slips_is_zero_mini_masked_with_the_models_own_slips():
    """The experiment is zero-mini-masked with the model's own slips in the corpus and without the KL term."""
    a, b = preset("zero-mini-masked"), preset("zero-mini-slips")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff - {"preset"} == {"corpus_mix", "beta"}
    assert b.corpus_mix == {**a.corpus_mix, "own_slip_rate": 0.1} and (a.beta, b.beta) == (0.5, 0.0)


def test_zero_mini_checks_finds_the_part_where_an_l_scratchpad_first_goes_wrong():
    """The right L completion has no wrong part; one changed character is blamed on the part that holds it."""
    checks = load_doc_script("zero-mini-checks.py")
    p = tasks.Problem("Compute 9335 + 7898", "17233", "addition", "VH", {"numbers": [9335, 7898]})
    right = tasks.render_response(p, "L")[len(tasks.mode_prefix(p, "L")):]
    parts = checks.l_parts(9335, 7898, p.answer)
    assert checks.first_wrong(right, parts) == "after the answer"
    for old, new, part in [("933 + 789", "933 + 788", "digits to add"), ("3 + 9 = 12", "3 + 9 = 13", "fact"),
                           ("12 + 1 = 13", "12 + 1 = 14", "carry added"), ("-> 33", "-> 38", "digits so far"),
                           ("is 17233", "is 17234", "so the sum is"), ("<answer> 17233", "<answer> 17234", "answer"),
                           ("17233 </think>", "17233 <think>", "format"), ("3 carry 1", "3 carry 0", "carry out")]:
        assert checks.first_wrong(right.replace(old, new, 1), parts) == part, (old, part)


def test_zero_mini_lead_writes_the_operands_first_and_its_probe_forces_that_layout(monkeypatch):
    """The experiment is zero-mini-slips's corpus with the operands first, and zero-mini's KL; the step-0 probe
    forces the modes with the layout the corpus taught (a probe forcing 'add 47 + 28 :' on a model that writes
    '47 + 28 by columns :' would measure nothing)."""
    a, b = preset("zero-mini-slips"), preset("zero-mini-lead")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff - {"preset"} == {"corpus_mix", "beta"} and b.corpus_mix == {**a.corpus_mix, "operands_first": 1}
    assert b.beta == preset("zero-mini-clean").beta == 0.5  # zero-mini-clean's KL
    problems = tasks.make_problems("addition", 3, split="test", seed=0, buckets=["H"])
    seen = []

    def fake_rollout(model, tok, probs, cfg, seed, temperature, group_size, top_p=1.0, prefixes=None):
        seen.extend(prefixes)
        texts = [pre + " 1 </think> <answer> 1 </answer>" for pre in prefixes for _ in range(group_size)]
        return None, type("G", (), {"lengths": [1] * len(texts)})(), texts
    monkeypatch.setattr(train, "rollout", fake_rollout)
    for cfg, lead in ((a, False), (b, True)):
        seen.clear()
        train.forced_mode_probe(None, None, problems, cfg, 0)
        want = [tasks.mode_prefix(p, m, lead) for _ in range(2) for m in ("D", "L", "LV") for p in problems]
        assert seen == want
        assert any("by columns" in s for s in seen) == lead


def test_zero_mini_half_is_zero_mini_clean_with_half_the_column_facts_slipping():
    """The experiment is zero-mini-clean's run on the own-slips corpus with half the facts slipping, and a KL of 0.4."""
    a, b = preset("zero-mini-clean"), preset("zero-mini-half")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff - {"preset"} == {"corpus_mix", "beta"} and (a.beta, b.beta) == (0.5, 0.4)
    assert b.corpus_mix == {**preset("zero-mini-slips").corpus_mix, "slip_rate": 0.5, "own_slip_rate": 0.5}


def test_zero_mini_is_zero_mini_half_with_lv_rarer_in_dialogues():
    """The preset changes one table of zero-mini-half: the dialogues' modes, LV rarer and L commoner by as much,
    so thinking keeps its share before RL; worked examples and drills (which teach the check) are unchanged."""
    a, b = preset("zero-mini-half"), preset("zero-mini")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff - {"preset"} == {"corpus_mix"}
    changed = {k for k in a.corpus_mix.keys() | b.corpus_mix.keys() if a.corpus_mix.get(k) != b.corpus_mix.get(k)}
    assert changed == {"dialogue_modes"}
    old, new = a.corpus_mix["dialogue_modes"], b.corpus_mix["dialogue_modes"]
    assert new["LV"] < old["LV"] / 2 and new["L"] + new["LV"] == pytest.approx(old["L"] + old["LV"])
    assert (new["D"], new["S"]) == (old["D"], old["S"])
