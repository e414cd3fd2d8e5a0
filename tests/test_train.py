"""train.py end to end on the smoke preset (tokenizer -> pretraining -> GRPO, seconds on a CPU): outputs, stage
caching, exact resume after a mid-run stop, the NaN guard, SFT, and the CLI's errors."""
import json
import os

import pytest
import torch

import train

SMALL = ["--preset", "smoke", "--threads=1"]


def metrics(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smoke"))
    summary = train.main(SMALL + ["--out_dir", out])
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
    assert {"forced_D/E", "forced_L/M"} <= set(evals[0])  # the step-0 forced-mode probe
    for r in train_rows:
        for k in ("reward", "accuracy", "format", "length", "reflection", "entropy", "grad_norm", "clip_low"):
            assert k in r and r[k] == r[k], k  # present and not NaN
    assert summary["first"]["step"] == 0 and summary["last"]["step"] == 4
    assert "## step 1" in open(os.path.join(out, "transcripts.md")).read()


def test_stages_are_cached(smoke_run, capsys):
    out, _ = smoke_run
    train.main(SMALL + ["--out_dir", out, "--rl_steps=1"])
    log = capsys.readouterr().out
    assert "[tokenizer] cached" in log and "[pretrain] cached" in log


def test_resume_after_a_stop_gives_the_same_run(smoke_run, tmp_path):
    out, _ = smoke_run
    full = [r for r in metrics(out) if r["kind"] == "train"]
    d = str(tmp_path / "resumed")
    assert train.main(SMALL + ["--out_dir", d, "--halt_after=3"]) == {"halted": True}  # killed after step 3
    assert max(r["step"] for r in metrics(d)) == 3
    train.main(SMALL + ["--out_dir", d, "--resume"])  # resumes from the step-2 checkpoint
    again = [r for r in metrics(d) if r["kind"] == "train"]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(full, again):
        for k in ("reward", "loss", "length", "entropy", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = train.grpo.rl_step
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        if len(calls) == 3:
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(train.grpo, "rl_step", flaky)
    d = str(tmp_path / "nan")
    with pytest.raises(SystemExit, match="non-finite GRPO loss at step 3"):
        train.main(SMALL + ["--out_dir", d, "--ckpt_every=1"])
    assert train.latest_rl_checkpoint(d).endswith("step_000002")
    model, meta = train.load_model(train.latest_rl_checkpoint(d), "cpu")
    assert meta["step"] == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_sft_lowers_the_loss_on_completion_tokens(smoke_run):
    out, _ = smoke_run
    model, _ = train.load_model(os.path.join(out, "base"), "cpu")
    examples = [([5, 6, 7, 8], [9, 10, 11]), ([5, 6], [12, 13, 14, 15])]
    tokens, target = train.sft_batch(examples, pad_id=0)
    assert target.sum() == 7 and not target[0, :3].any() and target[0, 3:6].all()  # completion tokens only
    losses = train.sft(model, examples, steps=30, batch_size=2, lr=3e-3, pad_id=0, log=lambda m: None)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("argv,msg", [
    (["--preset", "nope"], "valid presets: smoke"),
    (["--preset", "smoke", "--bogus=1"], "unknown field 'bogus'"),
    (["--preset", "smoke", "--model.bogus=1"], "unknown model field"),
    (["--preset", "smoke", "--rl_steps=abc"], "not a valid int"),
    (["--preset", "smoke", "--group_size=1"], "group_size must be >= 2"),
    (["--preset", "smoke", "--buckets=E,Z"], "unknown \\['Z'\\]"),
    (["--preset", "smoke", "--model=gpt5"], "not a model preset"),
    (["--preset", "smoke", "--problems=/no/such.jsonl"], "does not exist"),
    (["--preset", "smoke", "--batch_size=0"], "batch_size must be >= 1"),
])
def test_bad_arguments_fail_before_any_work(argv, msg):
    with pytest.raises(SystemExit, match=msg):
        train.parse_args(argv)


def test_help_lists_presets_and_fields(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "zero-small" in text and "--rl_steps=" in text and "--model.FIELD" in text


def test_wandb_flag_needs_the_package(monkeypatch):
    real = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(SystemExit, match="pip install wandb"):
        train.parse_args(["--preset", "smoke", "--wandb_project=r1"])
