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


def corpus_hash(mix, n=3000, seed=0):
    import hashlib
    import itertools
    return hashlib.sha256("".join(itertools.islice(tasks.corpus_stream(seed, mix), n)).encode()).hexdigest()


def test_zero_tiny_corpus_is_unchanged_by_the_mixing_option():
    """The ja_open_rate key defaults to 0 and then draws no random number: zero-tiny's corpus is byte-identical
    to the one its README numbers were measured on (the hash below was taken before the key existed)."""
    import train
    mix = train.TRAIN_PRESETS["zero-tiny"]["corpus_mix"]
    assert corpus_hash(mix) == "5155068b4f0d9461fb1a8774cb279742f9242ba3f1c82c8dbc02f66737761a25"
    assert corpus_hash({**mix, "ja_open_rate": 0.0}) == corpus_hash(mix)


def test_mixed_world_opens_half_the_thoughts_mixed():
    """r1-tiny-mixed's corpus: about half the dialogues mix languages from the first word of the reasoning,
    whatever the problem; the others open in English."""
    import itertools
    _, cfg = r1.parse_args(["--preset", "r1-tiny-mixed"])
    mix = r1.recipe(cfg).corpus_mix
    assert mix["ja_open_rate"] == 0.5
    dialogues = [(info, doc) for info, doc in itertools.islice(tasks.corpus_docs(0, mix), 4000)
                 if info["kind"] == "dialogue" and not info["defect"]]
    opened = [doc for info, doc in dialogues if info.get("ja_open")]
    assert 0.4 < len(opened) / len(dialogues) < 0.6
    first = lambda doc: doc.rsplit("<think>", 1)[1].split()[0]  # noqa: E731  (the prompt has a <think> too)
    assert all(general.language_of(first(doc)) == "ja" for doc in opened)
    english = [doc for info, doc in dialogues if not info.get("ja_open") and not info.get("drift")]
    assert english and all(general.language_of(first(doc)) == "en" for doc in english)
    by_mode = {info["mode"] for info, _ in dialogues if info.get("ja_open")}
    assert by_mode == {info["mode"] for info, _ in dialogues}  # every response mode opens mixed sometimes
    _, tiny = r1.parse_args(["--preset", "r1-tiny"])
    assert "ja_open_rate" not in r1.recipe(tiny).corpus_mix
