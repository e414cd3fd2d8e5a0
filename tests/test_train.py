"""train.py end to end on the smoke preset (tokenizer -> pretraining -> GRPO, seconds on a CPU): outputs, stage
caching, exact resume (with a reward that varies, so weights and optimizer state matter), runs never lost
(--resume / --overwrite), Ctrl-C, the NaN guard, the pluggable reward and prompt source, SFT (sharded by rank),
prefetched pretraining batches, and the CLI's one-line errors and help."""
import itertools
import json
import os
import shlex
import shutil
import threading
import traceback

import pytest
import torch
from safetensors.torch import load_file

import cli
import distributed
import runlog
import tasks
import train

SMALL = ["--preset", "smoke", "--threads=1"]


def metrics(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]


def with_cached_base(src, dst):
    """A fresh out_dir holding src's cached tokenizer and base model (same config: reused, not retrained)."""
    os.makedirs(dst)
    for stage in ("tokenizer", "base"):
        shutil.copytree(os.path.join(src, stage), os.path.join(dst, stage))
    return str(dst)


def varied_reward(texts, problems):
    """A reward that varies within groups at smoke scale (the rule reward is always 0 there), so GRPO moves
    the weights and resuming needs both the weights and the optimizer state."""
    return [{"reward": (len(t) % 3) / 2, "accuracy": 0.0, "format": 0.0} for t in texts]


@pytest.fixture(scope="module", autouse=True)
def problems_made_once():
    """Every run here draws the same 20000-problem synthetic pool: build it once (a test-speed cache)."""
    made, real = {}, tasks.make_problems
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks, "make_problems", lambda *a, **kw: made.setdefault(repr((a, kw)), real(*a, **kw)))
        yield


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke run, with a reward that varies (and truncated responses kept in the loss) so weights move."""
    out = str(tmp_path_factory.mktemp("smoke"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "rule_rewards", varied_reward)
        summary = train.main(SMALL + ["--out_dir", out, "--drop_truncated=false"])
    return out, summary


def test_smoke_runs_every_stage(smoke_run):
    out, summary = smoke_run
    for f in ("tokenizer/stage.json", "base/model.safetensors", "metrics.jsonl", "plots.png", "transcripts.md",
              "summary.json", "log.txt", "rl/step_000004/optimizer.safetensors", "rl/step_000004/tokenizer.json"):
        assert os.path.exists(os.path.join(out, f)), f
    rows = metrics(out)
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert {"forced_D/E", "forced_L/M", "forced_LV_rollout/M"} <= set(evals[0])  # the step-0 forced-mode probe
    for r in train_rows:
        for k in ("reward", "accuracy", "format", "length", "reflection", "entropy", "grad_norm", "clip_frac_low"):
            assert k in r and r[k] == r[k], k  # present and not NaN
    assert summary["first"]["step"] == 0 and summary["last"]["step"] == 4
    assert "## step 1" in open(os.path.join(out, "transcripts.md")).read()
    log = open(os.path.join(out, "log.txt")).read().splitlines()
    assert sum(l.startswith("[rl] step") for l in log) == 4  # a console line per step, TTY or not
    assert "final checkpoint" in log[-1] and "rl/step_000004" in log[-1] and "plots.png" in log[-1]
    meta = json.load(open(os.path.join(out, "rl/step_000004/nano_r1.json")))
    assert meta["task"] == "multiplication" and meta["preset"] == "smoke" and meta["step"] == 4


def test_an_existing_run_is_never_lost(smoke_run, tmp_path):
    out, _ = smoke_run
    with pytest.raises(SystemExit, match="already holds a run .*--resume, or start over with --overwrite"):
        train.main(SMALL + ["--out_dir", out])
    assert os.path.isdir(os.path.join(out, "rl", "step_000004"))  # untouched
    with pytest.raises(SystemExit, match="no RL checkpoint .* run without --resume"):
        train.main(SMALL + ["--out_dir", str(tmp_path / "empty"), "--resume"])
    d = tmp_path / "nockpt"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"kind": "eval", "step": 0}\n')  # a run killed before its first checkpoint
    with pytest.raises(SystemExit, match="no checkpoint yet .*start over with --overwrite") as e:
        train.main(SMALL + ["--out_dir", str(d)])
    assert "--resume" not in str(e.value)  # promises only what exists
    with pytest.raises(SystemExit, match="--resume continues .* --overwrite moves it aside"):
        train.parse_args(SMALL + ["--resume", "--overwrite"])


def test_overwrite_moves_the_run_aside_and_reuses_cached_stages(smoke_run, tmp_path, capsys):
    src, _ = smoke_run
    out = with_cached_base(src, tmp_path / "again")
    for name in ("rl", "metrics.jsonl", "transcripts.md"):
        (shutil.copytree if name == "rl" else shutil.copy)(os.path.join(src, name), os.path.join(out, name))
    old_metrics = open(os.path.join(out, "metrics.jsonl")).read()
    train.main(SMALL + ["--out_dir", out, "--rl_steps=1", "--overwrite"])
    log = capsys.readouterr().out
    assert "[tokenizer] cached" in log and "[pretrain] cached" in log
    assert open(os.path.join(out, "old_run_1", "metrics.jsonl")).read() == old_metrics  # moved, not deleted
    assert os.path.isdir(os.path.join(out, "old_run_1", "rl", "step_000004"))
    assert [r["step"] for r in metrics(out) if r["kind"] == "train"] == [1]


def test_resume_after_a_stop_gives_the_same_weights(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "rule_rewards", varied_reward)
    varied_run = smoke_run[0]
    full = [r for r in metrics(varied_run) if r["kind"] == "train"]
    assert all(r["grad_norm"] > 0 and r["reward_std"] > 0 for r in full)  # the reward varies: weights move
    base = load_file(os.path.join(varied_run, "base", "model.safetensors"))
    final = load_file(os.path.join(varied_run, "rl", "step_000004", "model.safetensors"))
    assert max((final[k] - base[k]).abs().max() for k in base) > 1e-4
    d = with_cached_base(smoke_run[0], tmp_path / "resumed")
    args = SMALL + ["--out_dir", d, "--drop_truncated=false"]
    assert train.main(args + ["--halt_after=3"]) == {"halted": True, "step": 3}  # killed after step 3
    assert max(r["step"] for r in metrics(d)) == 3
    train.main(args + ["--resume"])  # resumes from the step-2 checkpoint: steps 3 and 4 run again
    again = [r for r in metrics(d) if r["kind"] == "train"]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(full, again):
        for k in ("reward", "loss", "length", "entropy", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
    resumed = load_file(os.path.join(d, "rl", "step_000004", "model.safetensors"))
    for k in final:  # fails if resume skips the weights or the optimizer state (checked by breaking each)
        torch.testing.assert_close(resumed[k], final[k], rtol=1e-5, atol=1e-6)


def test_messages_promise_only_what_exists(smoke_run, tmp_path, capsys):
    d = with_cached_base(smoke_run[0], tmp_path / "halt")
    train.main(SMALL + ["--out_dir", d, "--halt_after=1"])  # the first checkpoint is at step 2
    out = capsys.readouterr().out
    assert "[rl] step    1" in out and "no RL checkpoint was written yet" in out and "--resume" not in out
    assert f"--out_dir {d} --overwrite" in out


def test_ctrl_c_exits_cleanly_with_the_resume_command(smoke_run, tmp_path, monkeypatch, capsys):
    real, calls = train.grpo.rl_step, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train.grpo, "rl_step", interrupted)
    d = with_cached_base(smoke_run[0], tmp_path / "ctrlc")
    with pytest.raises(SystemExit) as e:
        train.main(SMALL + ["--out_dir", d])
    assert e.value.code == 130
    out = capsys.readouterr().out
    assert "interrupted (Ctrl-C)" in out and "Traceback" not in out
    command = out.strip().splitlines()[-1].strip()  # resuming itself is test_resume_after_a_stop_...'s
    assert command.startswith("python train.py ") and command.endswith("--resume")
    assert f"resume from {d}/rl/step_000002 with:" in out
    assert train.parse_args(shlex.split(command)[2:]) == (train.parse_args(SMALL + ["--out_dir", d])[0], {"resume"})


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_run, tmp_path, monkeypatch):
    real = train.grpo.rl_step
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        if len(calls) == 3:
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(train.grpo, "rl_step", flaky)
    d = with_cached_base(smoke_run[0], tmp_path / "nan")
    with pytest.raises(SystemExit, match="non-finite GRPO loss at step 3"):
        train.main(SMALL + ["--out_dir", d, "--ckpt_every=1"])
    assert train.latest_rl_checkpoint(d).endswith("step_000002")
    model, meta = train.load_model(train.latest_rl_checkpoint(d), "cpu")
    assert meta["step"] == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_stage_rl_takes_a_reward_function_and_a_prompt_source(smoke_run, tmp_path, monkeypatch):
    """What R1's later stages reuse: their own prompts and reward, the same loop and bookkeeping. Run under bf16
    autocast, as on CUDA (emulated on the CPU): rollouts, evaluation and the RL step all enter it."""
    entered = []

    def bf16(device):
        entered.append(traceback.extract_stack(limit=2)[0].name)
        return torch.autocast("cpu", dtype=torch.bfloat16)
    monkeypatch.setattr(train, "autocast", bf16)
    src, _ = smoke_run
    cfg, _ = train.parse_args(SMALL + ["--out_dir", str(tmp_path), "--rl_steps=1", "--probe=false"])
    tok = train.Tokenizer.load(os.path.join(src, "tokenizer"))
    base, _ = train.load_model(os.path.join(src, "base"), "cpu")
    fixed = [tasks.Problem("say hi", "hi", "generic", "chat"), tasks.Problem("say yo", "yo", "generic", "chat")]
    asked = []

    def prompts(step):
        asked.append(step)
        return fixed

    def lengthy(texts, problems):  # any numbers besides "reward" become metrics
        assert problems == [p for p in fixed for _ in range(4)]  # rows prompt-major, groups of group_size
        return [{"reward": float(len(t)), "chars": float(len(t))} for t in texts]

    train.stage_rl(cfg, tok, base, torch.device("cpu"), False, lambda m: None, prompts=prompts, score=lengthy)
    row = [r for r in metrics(str(tmp_path)) if r["kind"] == "train"][0]
    assert asked == [0] and row["reward"] == row["chars"] > 0 and "length/chat" in row
    assert set(entered) == {"rollout", "grpo_step", "evaluate"} and row["grad_norm"] > 0
    assert "**say hi** (bucket chat" in open(tmp_path / "transcripts.md").read()


def test_build_rollouts_concatenates_prompt_and_response():
    gen = train.sample.Generation(tokens=torch.tensor([[7, 8, 0], [9, 0, 0]]), mask=None, logprobs=None,
                                  lengths=torch.tensor([2, 1]), truncated=torch.tensor([True, False]))
    batch = train.build_rollouts([[1, 2, 3]], gen, [{"reward": 1.0}, {"reward": 0.5}], group_size=2, pad_id=0)
    assert batch["tokens"].tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0]]
    assert batch["response_mask"].tolist() == [[False] * 3 + [True, True], [False] * 3 + [True, False]]
    assert batch["rewards"].tolist() == [1.0, 0.5] and batch["truncated"].tolist() == [True, False]


def test_sft_lowers_the_loss_on_completion_tokens(smoke_run):
    out, _ = smoke_run
    model, _ = train.load_model(os.path.join(out, "base"), "cpu")
    examples = [([5, 6, 7, 8], [9, 10, 11]), ([5, 6], [12, 13, 14, 15])]
    tokens, target = train.sft_batch(examples, pad_id=0)
    assert target.sum() == 7 and not target[0, :3].any() and target[0, 3:6].all()  # completion tokens only
    losses = train.sft(model, examples, steps=30, batch_size=2, lr=3e-3, pad_id=0, log=lambda m: None)
    assert losses[-1] < 0.5 * losses[0]


def test_sft_gives_each_rank_its_own_slice(monkeypatch):
    model = train.Transformer(train.ModelConfig.from_preset("tiny-mla", vocab_size=64))
    examples = [([1, 2], [3 + i]) for i in range(8)]
    seen = {}
    real = train.sft_batch
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        monkeypatch.setattr(distributed, "RANK", rank)
        monkeypatch.setattr(distributed, "WORLD", world)
        monkeypatch.setattr(distributed, "all_mean", lambda x: x)
        monkeypatch.setattr(train, "sft_batch", lambda b, pad_id: (seen.setdefault((rank, world), []).append(
            [c[0] for _, c in b]), real(b, pad_id))[1])
        train.sft(model, examples, steps=2, batch_size=4, lr=1e-3, pad_id=0, log=lambda m: None)
    for step in range(2):
        whole, r0, r1 = seen[0, 1][step], seen[0, 2][step], seen[1, 2][step]
        assert len(r0) == len(r1) == 2 and r0 == whole[0::2] and r1 == whole[1::2]  # disjoint slices, one batch
    with pytest.raises(ValueError, match="divisible"):
        train.sft(model, examples, steps=1, batch_size=3, lr=1e-3, pad_id=0, log=lambda m: None)


def test_prefetched_batches_equal_serial_batches(smoke_run):
    out, _ = smoke_run
    cfg, _ = train.parse_args(SMALL)
    tok = train.Tokenizer.load(os.path.join(out, "tokenizer"))
    steps = range(3, 9)
    serial = [train.pretrain_batch(cfg, tok, s) for s in steps]
    for (a, la), (b, lb) in zip(serial, train.prefetch(lambda s: train.pretrain_batch(cfg, tok, s), steps),
                                strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)

    def fails_at_2(s):
        if s == 2:
            raise RuntimeError("boom")
        return s
    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for x in train.prefetch(fails_at_2, range(5)):
            got.append(x)
    assert got == [0, 1]


def write(path, lines):
    path.write_text("".join(l + "\n" for l in lines))
    return str(path)


def test_pretraining_masks_exactly_the_injected_wrong_facts():
    """With mask_slips (the masked-slip experiment's corpus), the targets left out of the loss spell the corpus's
    wrong facts and nothing else; without it every target is learned."""
    cfg, _ = train.parse_args(["--preset", "zero-mini", "--batch_size=8"])
    cfg.corpus_mix = train.ZERO_MINI_MASKED_MIX
    tok = train.Tokenizer.train([train.corpus_text(5, 0.2, cfg.corpus_mix)], 400)
    batch, learn = train.pretrain_batch(cfg, tok, step=3)  # (B, T+1), (B, T)
    assert learn.dtype == torch.bool and 0 < (~learn).sum() < 0.05 * learn.numel()
    masked_text = tok.decode(batch[:, 1:][~learn].tolist())
    docs = itertools.islice(tasks.corpus_docs(seed=cfg.seed * 1_000_003 + 3, mix=cfg.corpus_mix), 200)
    want = "".join(doc[a:b] for info, doc in docs for a, b in info["slips"])
    assert want.startswith(masked_text.replace(" ", ""))  # the masked digits, in order, are the slipped sums
    cfg.corpus_mix = train.ADDITION_MIX  # unmasked: its slips (one in a third of LV traces) are learned
    assert train.pretrain_batch(cfg, tok, step=3)[1].all()


def test_pretrain_step_loss_ignores_the_masked_targets():
    """The loss is the mean over learned targets: changing a masked target changes nothing."""
    torch.manual_seed(0)
    model = train.Transformer(train.ModelConfig.from_preset("tiny-mla", vocab_size=64))
    batch = torch.randint(0, 64, (2, 17))  # (B, T+1)
    learn = torch.ones(2, 16, dtype=torch.bool)  # (B, T)
    learn[0, 9:] = False
    other = batch.clone()
    other[0, 16] = (batch[0, 16] + 1) % 64  # the last target (never an input)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for b in (batch, other):
        model.load_state_dict(state)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses.append(train.pretrain_step(model, opt, b, lr=0.0, learn=learn))
    assert abs(losses[0] - losses[1]) < 1e-6
    model.load_state_dict(state)
    assert abs(train.pretrain_step(model, opt, other, lr=0.0) - losses[1]) > 1e-4  # unmasked: the change counts


def test_problem_files_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "stage_tokenizer", lambda *a: pytest.fail("work started before the checks"))
    good = json.dumps({"question": "1+1?", "answer": "so #### 2"})
    cases = [
        ([good, "{not json"], [], "bad.jsonl:2: invalid JSON"),
        ([], [], "no problems"),
        ([good] * 3, [], "leaves 1 training problems.*--prompts_per_step=2"),
        ([good] * 2, [], "has 2 problems; need more than --eval_problems=2"),
        ([good] * 4, ["--problems_kind=math"], "bad.jsonl:1: expected an object with fields"),
        ([json.dumps({"question": "q", "answer": "x </answer> y"})] * 5, ["--problems_kind=generic"],
         "bad.jsonl:1: the rule reward cannot match"),
    ]
    for lines, extra, msg in cases:
        path = write(tmp_path / "bad.jsonl", lines)
        with pytest.raises(SystemExit, match=msg):
            train.main(SMALL + ["--out_dir", str(tmp_path / "out"), f"--problems={path}"] + extra)
    path = write(tmp_path / "ok.jsonl", [good] * 5)
    with pytest.raises(SystemExit, match="empty.jsonl: no problems"):
        train.main(SMALL + [f"--problems={path}", f"--eval_path={write(tmp_path / 'empty.jsonl', [])}"])
    pool, held = train.load_problems(train.parse_args(SMALL + [f"--problems={path}"])[0])
    assert len(pool) == 3 and len(held) == 2 and pool[0].answer == "2"


@pytest.mark.parametrize("argv,msg", [
    (["--preset", "nope"], "valid presets: smoke"),
    (["--preset", "smoke", "--bogus=1"], "unknown field 'bogus'"),
    (["--preset", "smoke", "--rl_stepz=1"], "did you mean 'rl_steps'"),
    (["--preset", "smoke", "--model.bogus=1"], "unknown model field"),
    (["--preset", "smoke", "--rl_steps=abc"], "not a valid int"),
    (["--preset", "zero-mini", '--corpus_mix={"mask_slip": 1}'], "unknown mix key 'mask_slip'; valid:"),
    (["--preset", "zero-mini", '--corpus_mix={"mask_slips": "yes"}'], "must be a number >= 0, got 'yes'"),
    (["--preset", "zero-mini-slips", '--corpus_mix={"own_slip_rate": 1.5}'], "own_slip_rate.*<= 1 .*got 1.5"),
    (["--preset", "zero-mini", '--corpus_mix={"own_slip_rate": 0.1}'], "own_slip_rate.*needs mix\\['mask_slips'\\] = 1"),
    (["--preset", "smoke", "--group_size=1"], "group_size must be >= 2"),
    (["--preset", "smoke", "--buckets=E,Z"], "unknown \\['Z'\\]"),
    (["--preset", "smoke", "--model=gpt5"], "not a model preset"),
    (["--preset", "smoke", "--problems=/no/such.jsonl"], "does not exist"),
    (["--preset", "smoke", "--batch_size=0"], "batch_size must be >= 1"),
    (["--preset", "smoke", "--const_norm=160"], "--const_norm=160 needs --token_level=false"),
    (["--preset", "smoke", "--clip_low=1.5"], "--clip_low=1.5 must be in \\[0, 1\\)"),
    (["--preset", "smoke", "--eval_batch=1"], "eval_batch must be 0"),
    (["--preset", "smoke", "--overlong_buffer=25"], "--overlong_buffer=25 must be in \\[0, --max_new_tokens=24\\]"),
])
def test_bad_arguments_fail_before_any_work(argv, msg):
    with pytest.raises(SystemExit, match=msg):
        train.parse_args(argv)


def test_flags_take_dashes_and_the_old_name(capsys):
    cfg, switches = train.parse_args(["--preset", "smoke", "--rl-steps=3", "--max-new-tokens", "9", "--resume",
                                      "--mask_truncated=false", "--const-norm=9", "--token-level=false"])
    assert (cfg.rl_steps, cfg.max_new_tokens, cfg.drop_truncated, cfg.const_norm) == (3, 9, False, 9)
    assert switches == {"resume"} and cfg.preset == "smoke" and cfg.out_dir == os.path.join("runs", "smoke")
    assert "--mask_truncated is now called --drop_truncated" in capsys.readouterr().out


def test_help_groups_every_field_and_shows_a_presets_values(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for group in ("run:", "model:", "data:", "pretraining:", "RL:", "eval:", "logging:"):
        assert f"\n{group}\n" in text, group
    listed = [l.split("=")[0].strip(" *-") for l in text.splitlines() if l.lstrip(" *").startswith("--")]
    fields = [f.name for f in train.dataclasses.fields(train.TrainConfig)]
    assert set(fields) <= set(listed) and "--model.FIELD" in text
    for name, desc in sum((items for _, items in cli.field_help(train.TrainConfig)), []):
        assert desc, f"--{name} has no description"
    assert " --rl_steps=60 " in text  # the dataclass default
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "smoke", "--help"])
    assert "*--rl_steps=4 " in capsys.readouterr().out  # the preset's value, marked as set by it


def test_full_scale_preset_on_cpu_names_the_flags_that_make_it_small():
    cfg = train.TrainConfig(**train.TRAIN_PRESETS["zero-full"])
    cfg.preset = "zero-full"
    note = train.cpu_notice(cfg, torch.device("cpu"))
    assert note.startswith("note: zero-full is sized for GPUs") and train.SMALL_ON_CPU in note
    assert train.cpu_notice(cfg, torch.device("cuda")) == ""
    assert train.cpu_notice(train.parse_args(SMALL)[0], torch.device("cpu")) == ""
    small, _ = train.parse_args(SMALL + train.SMALL_ON_CPU.split())  # every flag named is a real flag
    assert small.eval_problems == 8 and small.rl_steps == 10


def test_wandb_flag_needs_the_package(monkeypatch):
    real = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(SystemExit, match="pip install wandb"):
        train.parse_args(["--preset", "smoke", "--wandb_project=r1"])


def test_step_metrics_average_whatever_the_reward_returns():
    rows = [{"bucket": "E", "text": "wait no", "long": 1.0, "reward": 1.0, "accuracy": 1.0, "length": 4,
             "truncated": 0.0, "answer": "3"},
            {"bucket": "M", "text": "ok", "long": None, "reward": 0.0, "accuracy": 0.0, "length": 8,
             "truncated": 1.0, "answer": None}]
    m = runlog.step_metrics(rows)
    assert (m["reward"], m["length"], m["truncated"], m["length_correct"], m["length_wrong"]) == (0.5, 6, 0.5, 4, 8)
    assert m["reflection"] == pytest.approx(100 / 3) and m["long/E"] == 1.0 and m["accuracy/M"] == 0.0
    assert "answer" not in m


def test_evaluation_is_one_sampler_call_on_gpu():
    cfg = train.parse_args(SMALL + ["--eval_k=8"])[0]
    assert train.eval_batch(cfg, 256, torch.device("cuda")) == 256 * 8  # every sequence in one decode loop
    assert train.eval_batch(cfg, 256, torch.device("cpu")) == 256  # CPU runs keep the measured batches
    assert train.eval_batch(train.parse_args(SMALL + ["--eval_batch=64"])[0], 256, torch.device("cuda")) == 64


# ----------------------------------------------------------------------------- --overlap: rewards beside device work

TIMINGS = ("seconds", "sample_seconds", "score_seconds")  # wall clock: the only fields the two paths may differ in


def test_overlapped_step_equals_the_serial_twin_bitwise(smoke_run, tmp_path, monkeypatch):
    """--overlap scores the rewards on a thread while the device computes the frozen log-probs (a reference model,
    beta > 0, and pi_old, mu = 2). Three smoke steps give the same metrics and weights, bit for bit, as
    --overlap=false, and the weights moved."""
    monkeypatch.setattr(train, "rule_rewards", varied_reward)
    runs = {}
    for overlap in ("true", "false"):
        d = with_cached_base(smoke_run[0], tmp_path / f"overlap_{overlap}")
        train.main(SMALL + ["--out_dir", d, "--drop_truncated=false", "--beta=0.05", "--mu=2", "--rl_steps=3",
                            "--eval_every=3", "--probe=false", f"--overlap={overlap}"])
        runs[overlap] = d
    fast, slow = (metrics(runs[o]) for o in ("true", "false"))
    assert [r["step"] for r in fast] == [r["step"] for r in slow] == [0, 1, 2, 3, 3]
    for a, b in zip(fast, slow):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
    assert all(r["kl"] > 0 and r["grad_norm"] > 0 for r in fast if r["kind"] == "train")  # both frozen policies ran
    fast, slow, base = (load_file(os.path.join(d, *p, "model.safetensors"))
                        for d, p in ((runs["true"], ("rl", "step_000003")), (runs["false"], ("rl", "step_000003")),
                                     (smoke_run[0], ("base",))))
    assert all(torch.equal(fast[k], slow[k]) for k in base)
    assert max((fast[k] - base[k]).abs().max() for k in base) > 1e-4


def smoke_step_parts(smoke_run, *flags):
    """What train.grpo_step takes, for the smoke base model with a reference model (beta > 0)."""
    src, _ = smoke_run
    cfg, _ = train.parse_args(SMALL + ["--beta=0.05", "--mu=2", "--drop_truncated=false", *flags])
    tok = train.Tokenizer.load(os.path.join(src, "tokenizer"))
    model, _ = train.load_model(os.path.join(src, "base"), "cpu")
    problems = tasks.make_problems(cfg.task, cfg.prompts_per_step, seed=0, buckets=["E"])
    opt = train.make_optimizer(model, cfg.rl_lr, 0.0)
    return dict(model=model, sampler=model, opt=opt, problems=problems, tok=tok, cfg=cfg, gcfg=train.grpo_config(cfg),
                seed=0, ref_model=distributed.frozen_copy(model))


def test_overlap_scores_on_a_thread_while_the_frozen_logprobs_run(smoke_run, monkeypatch):
    started, seen, real = threading.Event(), {}, train.grpo.frozen_logprobs

    def frozen(*a, **kw):
        started.set()
        return real(*a, **kw)

    def score(texts, problems):  # finishes only once the device work has begun (or gives up after 30 s)
        seen["thread"], seen["concurrent"] = threading.get_ident(), started.wait(timeout=30)
        return varied_reward(texts, problems)
    monkeypatch.setattr(train.grpo, "frozen_logprobs", frozen)
    diag, rows = train.grpo_step(score=score, **smoke_step_parts(smoke_run, "--overlap=true"))
    assert seen == {"thread": seen["thread"], "concurrent": True} and seen["thread"] != threading.get_ident()
    assert diag["kl"] > 0 and diag["score_seconds"] > 0 and len(rows) == 8


def test_overlong_buffer_adds_dapos_length_penalty_to_the_reward(smoke_run, monkeypatch):
    seen, real = [], train.grpo.rl_step
    monkeypatch.setattr(train.grpo, "rl_step", lambda model, opt, batch, *a, **kw: (
        seen.append(batch["rewards"].clone()), real(model, opt, batch, *a, **kw))[1])
    n = {}
    for buffer in (0, 24):  # 24 = smoke's cap: the penalty starts at the first token
        _, rows = train.grpo_step(score=varied_reward, **smoke_step_parts(smoke_run, f"--overlong_buffer={buffer}"))
        n[buffer] = [r["length"] for r in rows]
    assert n[0] == n[24]  # the same rollouts (same seed): only the reward differs
    expected = torch.tensor([(-n / 24 if n < 24 else -1.0) for n in n[24]])  # (0 - n) / 24, -1 at the cap
    assert torch.allclose(seen[1] - seen[0], expected) and (expected < 0).all()
    assert rows[0]["overlong"] == expected[0].item()


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_an_error_in_the_reward_surfaces_in_the_main_thread(smoke_run, overlap):
    def broken(texts, problems):
        raise ValueError("reward function broke")
    with pytest.raises(ValueError, match="reward function broke"):
        train.grpo_step(score=broken, **smoke_step_parts(smoke_run, f"--overlap={overlap}"))


def test_frozen_logprobs_need_no_rewards_and_feed_rl_step_unchanged():
    """grpo.frozen_logprobs (reference and pi_old) on rollouts without rewards, passed to rl_step, gives the same
    update, bit for bit, as rl_step computing them itself; dropped equal groups included."""
    import grpo
    torch.manual_seed(0)
    model = train.Transformer(train.ModelConfig.from_preset("tiny-mla", vocab_size=64))
    ref = distributed.frozen_copy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a reference that differs: kl > 0
    tokens = torch.randint(1, 64, (8, 12))  # (B, L)
    response_mask = torch.zeros(8, 12, dtype=torch.bool)  # (B, L)
    for r in range(8):
        response_mask[r, 4:5 + r] = True
    rollouts = {"tokens": tokens, "response_mask": response_mask, "truncated": torch.tensor([False] * 7 + [True])}
    cfg = grpo.GRPOConfig(group_size=4, beta=0.1, mu=2, micro_batch=3, drop_equal_groups=True, drop_truncated=True)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # the second group is dropped
    runs = []
    for precompute in (True, False):
        m = train.copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        frozen = grpo.frozen_logprobs(m, rollouts, cfg, ref) if precompute else None  # no "rewards" key yet
        diag = grpo.rl_step(m, opt, {**rollouts, "rewards": rewards}, cfg, ref_model=ref, frozen=frozen)
        runs.append((diag, [p.detach().clone() for p in m.parameters()]))
    (d1, w1), (d2, w2) = runs
    assert d1 == d2 and d1["kl"] > 0 and all(torch.equal(a, b) for a, b in zip(w1, w2))
    old, ref_logp = grpo.frozen_logprobs(model, rollouts, cfg, ref)
    assert old.shape == ref_logp.shape == (8, 11) and (old[:7] != 0).any() and (old[7] == 0).all()  # truncated: out
