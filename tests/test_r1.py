"""R1's pipeline (r1.py) at smoke scale: every stage runs, stage 3 keeps traces, the reward model trains on
pairs, the table has every row; a rerun reuses the finished stages; the reward functions of stages 2 and 4."""
import json
import math
import os

import pytest
import torch

import general
import r1
import tasks
from model import PRESETS, ModelConfig, Transformer
from reward_model import RewardModel


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("r1") / "run")
    return out, r1.main(["--preset", "r1-smoke", "--out_dir", out])


def test_smoke_runs_every_stage_and_writes_the_table(smoke_run):
    out, res = smoke_run
    assert list(res["rows"]) == ["base", "R1-Zero", "1 cold start", "2 reasoning RL", "3 rejection sampling + SFT",
                                 "4 all-scenario RL"]
    assert res["stage3"]["kept"] >= 1 and res["stage3"]["sft_steps"] >= 1
    assert 0.0 <= res["rows"]["4 all-scenario RL"]["rm_accuracy"] <= 1.0
    table = open(os.path.join(out, "results.md")).read()
    for name in res["rows"]:
        assert f"| {name} |" in table
    saved = json.load(open(os.path.join(out, "results.json")))
    assert set(saved["rows"]) == set(res["rows"])
    for stage in ("r1-zero", "stage2", "stage4"):
        assert os.path.exists(os.path.join(out, stage, "metrics.jsonl"))


def test_rerun_reuses_finished_stages(smoke_run, capsys):
    out, first = smoke_run
    again = r1.main(["--preset", "r1-smoke", "--out_dir", out])
    log = capsys.readouterr().out
    for stage in ("r1-zero", "stage1", "stage2", "stage3", "stage4"):
        assert f"[{stage}] cached" in log
    assert again["rows"]["2 reasoning RL"] == first["rows"]["2 reasoning RL"]


def test_bad_flags_are_one_line_errors():
    for argv, text in [(["--preset", "r1-huge"], "valid presets"), (["--drift_rate=2"], "drift_rate"),
                       (["--recipe", "zero-full"], "checkpoint"), (["--nope=1"], "valid fields")]:
        with pytest.raises(SystemExit, match=text):
            r1.parse_args(argv)


def test_reasoning_score_adds_language_consistency():
    p = tasks.make_problems("count", 1, seed=0, buckets=["E"])[0]
    english = f" <think> step a no 0 so {p.answer} </think> <answer> {p.answer} </answer>"
    mixed = f" <think> step a いいえ 0 だから {p.answer} </think> <answer> {p.answer} </answer>"
    en, mx = r1.reasoning_score(0.5)([english, mixed], [p, p])
    assert en["accuracy"] == mx["accuracy"] == 1.0
    assert en["reward"] - mx["reward"] == pytest.approx(0.5 * (en["language"] - mx["language"]))
    assert en["language"] == 1.0 > mx["language"]


def test_all_scenario_score_routes_general_prompts_to_the_reward_model():
    class Tok:  # bytes as ids: enough for the reward model
        pad_id = 0

        def encode(self, text):
            return list(text.encode())[-60:]
    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig(**PRESETS["tiny-gqa"], vocab_size=256)))
    torch.nn.init.normal_(rm.head.weight)
    gp = general.make_general(1, "train", 0)[0]
    rp = tasks.make_problems("count", 1, seed=0, buckets=["E"])[0]
    texts = [general.good_response(gp), f" <think> x </think> <answer> {rp.answer} </answer>"]
    g, r = r1.all_scenario_score(rm, Tok(), 0.0)(texts, [gp, rp])
    assert g["reward"] == g["rm"] == pytest.approx(rm.score([Tok().encode(tasks.r1_zero_prompt(gp.question)
                                                                          + texts[0])])[0].item(), abs=1e-5)
    assert g["hidden"] == 1.0 and math.isnan(g["accuracy"])
    assert r["accuracy"] == 1.0 and math.isnan(r["rm"]) and math.isnan(r["hidden"])


def test_mixed_prompts_share_and_determinism():
    pool = tasks.make_problems("count", 50, seed=0)
    gpool = general.make_general(50, "train", 0)
    prompts = r1.mixed_prompts(pool, gpool, 8, 0.25, seed=0)
    batch = prompts(3)
    assert sum(p.task == "general" for p in batch) == 2 and len(batch) == 8
    assert [p.question for p in prompts(3)] == [p.question for p in batch]
