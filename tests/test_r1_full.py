"""r1-full (r1.py from a real checkpoint with JSONL data) under torchrun: 2 ranks on gloo run the four stages from a
tiny random Hugging Face checkpoint made here; and the loaders' one-line file:line errors, before any model loads."""
import json
import math
import os
import subprocess
import sys

import pytest

import r1
from test_fsdp import _tiny_hf_checkpoint  # a random Qwen2 model + a byte-level BPE tokenizer.json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return str(path)


def data_files(d) -> dict:
    """The four files of r1-full, small."""
    think = lambda a, b: f"<think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>"  # noqa: E731
    return {
        "cold_start": write_jsonl(d / "cold.jsonl", [{"question": f"What is {i} + 1?", "response": think(i, 1)}
                                                     for i in range(6)]),
        "problems": write_jsonl(d / "gsm8k.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}
                                                    for i in range(10)]),
        "general_prompts": write_jsonl(d / "general.jsonl", [
            {"prompt": "Who are you?", "response": "<think> a question about me </think> <answer> nano-r1 </answer>"},
            {"prompt": "Translate to Japanese: cat"}, {"prompt": "Tell me how to pick a lock."},
            {"prompt": "Name a color.", "response": "<think> one color </think> <answer> blue </answer>"}]),
        "preferences": write_jsonl(d / "prefs.jsonl", [
            {"prompt": f"Question {i}?", "chosen": f"<think> ok </think> <answer> {i} </answer>",
             "rejected": "<think> no </think> <answer> I will not answer. </answer>"} for i in range(12)]),
    }


def flags(files: dict) -> list[str]:
    """The data files, and sizes these small files allow (2 held-out problems, 2 prompts per RL step)."""
    return [f"--{k}={v}" for k, v in files.items()] + ["--eval_problems=2", '--recipe_args={"prompts_per_step": 2}']


def test_r1_full_on_two_ranks_from_a_hugging_face_checkpoint(tmp_path, capsys):
    import checkpoint
    ckpt = tmp_path / "base"
    ckpt.mkdir()
    _tiny_hf_checkpoint(ckpt)
    files = data_files(tmp_path)
    out = tmp_path / "run"
    recipe = {"max_new_tokens": 6, "prompts_per_step": 2, "group_size": 2, "micro_batch": 4, "eval_every": 1,
              "ckpt_every": 1, "transcript_every": 1, "fused_head": False}
    argv = ["--preset", "r1-full", f"--init={ckpt}", *flags(files), f"--out_dir={out}", "--cold_start_steps=3",
            "--sft_batch_size=2", "--sft_lr=1e-3", "--stage2_steps=1", "--rs_problems=4", "--rs_k=2",
            "--rm_steps=2", "--rm_lr=1e-3", "--stage4_steps=1", "--eval_k=2", f"--recipe_args={json.dumps(recipe)}"]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(REPO, "r1.py"), *argv], env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"r1-full failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "x 2 ranks (FSDP)" in p.stdout and "6 cold-start pairs, 8 + 2 held-out problems" in p.stdout
    res = json.load(open(out / "results.json"))
    assert list(res["rows"]) == ["base", "1 cold start", "2 reasoning RL", "3 rejection sampling + SFT",
                                 "4 all-scenario RL"]
    for row in res["rows"].values():
        assert 0.0 <= row["pass@1"] <= 1.0 and 0.0 <= row["format"] <= 1.0 and "general_score" not in row
    assert 0.0 <= res["rows"]["4 all-scenario RL"]["rm_accuracy"] <= 1.0
    assert res["cold_start_examples"] == 6
    assert res["stage3"]["general"] == 2 and res["stage3"]["sft_steps"] >= 1  # the prompts with a response
    assert res["stage3"]["samples"] == 4 * 2  # rs_problems x rs_k, sampled by the two ranks and gathered
    # stage 4 mixed reasoning and general prompts: the reward model scored the general rows, no hidden rule
    steps = [json.loads(line) for line in open(out / "stage4" / "metrics.jsonl")]
    step = next(r for r in steps if r["kind"] == "train")
    assert math.isfinite(step["rm"]) and (step["hidden"] is None or math.isnan(step["hidden"]))
    # what 2 ranks saved loads in one process, and the cold start moved the weights away from the checkpoint
    base = checkpoint.load(str(ckpt))[0].state_dict()
    cold = checkpoint.load(str(out / "stage1"))[0].state_dict()
    assert max((base[k] - cold[k]).abs().max().item() for k in base) > 1e-4
    assert os.path.isdir(out / "stage2" / "rl" / "step_000001") and os.path.isdir(out / "stage4" / "rl" / "step_000001")
    # the same command in one process reuses every stage the 2 ranks finished, and evaluates them the same
    again = r1.main(argv)
    log = capsys.readouterr().out
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        assert f"[{stage}] cached" in log
    assert again["rows"]["2 reasoning RL"] == res["rows"]["2 reasoning RL"]


# ---------------------------------------------------------------------------------------------------------------
# The loaders: every line checked, one-line errors naming file:line, before any model loads.

BAD = {  # file -> (line 2's content, what the error says)
    "cold_start": [('{"question": "q", "response": ', "invalid JSON"),
                   ('{"question": "q"}', "missing ['response']"),
                   ('{"question": "q", "response": "7"}', "R1's readable format"),
                   ('{"question": "", "response": "<think> a </think> <answer> 7 </answer>"}', "non-empty string"),
                   ('["q", "r"]', "expected a JSON object")],
    "general_prompts": [('{"prompt": 3}', "non-empty string"), ('{"question": "q"}', "missing ['prompt']"),
                        ('{"prompt": "q", "response": "no tags"}', "R1's readable format")],
    "preferences": [('{"prompt": "p", "chosen": "a"}', "missing ['rejected']"),
                    ('{"prompt": "p", "chosen": "a", "rejected": " a "}', "the same response"),
                    ("{not json}", "invalid JSON")],
    "problems": [('{"question": "q", "answer": "no final answer"}', "####"), ('{"q": 1}', "expected")],
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "ckpt").mkdir()
    (d / "ckpt" / "config.json").write_text("{}")  # the loaders run before the weights are read
    _tiny_tokenizer(d / "ckpt")
    return d, data_files(d)


@pytest.mark.parametrize("name,line,expect", [(n, line, e) for n, cases in BAD.items() for line, e in cases])
def test_a_bad_line_is_a_one_line_error_naming_file_and_line(good, tmp_path, name, line, expect):
    d, files = good
    first = open(files[name]).readline()
    bad = write_jsonl(tmp_path / f"bad_{name}.jsonl", [first.rstrip("\n"), line, first.rstrip("\n")])
    out = tmp_path / "run"
    argv = ["--preset", "r1-full", f"--init={d / 'ckpt'}", *flags({**files, name: bad}), f"--out_dir={out}"]
    with pytest.raises(SystemExit) as e:
        r1.main(argv)
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg and f"{bad}:2" in msg and expect in msg, msg
    assert not out.exists()  # nothing started


@pytest.mark.parametrize("name", ["cold_start", "general_prompts", "preferences", "problems"])
def test_an_empty_file_is_an_error(good, tmp_path, name):
    d, files = good
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(SystemExit, match=f"{empty}.*(empty|no problems)"):
        r1.main(["--preset", "r1-full", f"--init={d / 'ckpt'}", *flags({**files, name: empty}),
                 f"--out_dir={tmp_path / 'run'}"])


def test_loaders_read_good_files(good):
    _, files = good
    cold = r1.load_cold_start(files["cold_start"])
    assert len(cold) == 6 and cold[0]["completion"].startswith(" <think> 0 + 1 = 1")
    assert cold[0]["prompt"].endswith("What is 0 + 1?. Assistant:") or "What is 0 + 1?" in cold[0]["prompt"]
    general = r1.load_general_prompts(files["general_prompts"])
    assert [("response" in p.meta) for p in general] == [True, False, False, True]
    assert general[0].task == "general" and general[1].meta["source"].endswith("general.jsonl:2")
    prefs = r1.load_preferences(files["preferences"])
    assert len(prefs) == 12 and prefs[0][1].startswith(" <think>")
    one = write_jsonl(os.path.join(os.path.dirname(files["preferences"]), "one.jsonl"),
                      [open(files["preferences"]).readline().rstrip("\n")])
    with pytest.raises(SystemExit, match="need at least 2"):
        r1.load_preferences(one)


def _tiny_tokenizer(d):
    """A byte-level BPE tokenizer.json with no merges to speak of: enough for the checks before any model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["ab"], trainers.BpeTrainer(vocab_size=258, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(d / "tokenizer.json"))


def test_a_checkpoint_without_a_tokenizer_is_an_error(good, tmp_path):
    _, files = good
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="tokenizer.json not found"):
        r1.main(["--preset", "r1-full", f"--init={tmp_path / 'ckpt'}", *flags(files)])


def test_too_few_general_prompts_for_a_step_is_an_error(good, tmp_path):
    _, files = good
    with pytest.raises(SystemExit, match="has 4 general prompts; stage 4 draws 6"):
        r1.main(["--preset", "r1-full", f"--init={good[0] / 'ckpt'}", *flags(files), "--general_prompt_share=0.75",
                 '--recipe_args={"prompts_per_step": 8}'])


def test_r1_full_flags():
    for argv, text in [(["--preset", "r1-full"], "--init"),
                       (["--preset", "r1-full", "--init=/nonexistent"], "not a Hugging Face checkpoint"),
                       (["--preset", "r1-tiny", "--init=."], "--init is for recipes")]:
        with pytest.raises(SystemExit, match=text):
            r1.parse_args(argv)
