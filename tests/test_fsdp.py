"""FSDP (train.py under torchrun) on CPU with the gloo backend, 2 processes: the same losses and parameters as one
process on the same global batch, checkpoints that move between world sizes, and a zero-full run that starts
from a tiny random Hugging Face checkpoint made here."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "fsdp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def run(cmd, timeout=240):
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    run([sys.executable, WORKER, "train", str(one)])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, "train",
         str(two)])
    return one, two


def assert_states_close(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max abs difference {worst:.2e} > {atol}"


def test_two_ranks_match_one_process(runs):
    one, two = runs
    r1, r2 = (json.load(open(d / "result.json")) for d in (one, two))
    assert (r1["world"], r2["world"]) == (1, 2)
    assert r1["pretrain"] == pytest.approx(r2["pretrain"], rel=1e-5, abs=1e-6)
    assert r1["grpo"] == pytest.approx(r2["grpo"], rel=1e-4, abs=1e-6)
    assert_states_close(load_file(one / "state.safetensors"), load_file(two / "state.safetensors"), atol=1e-4)


def test_sampling_replica_and_reference_follow_the_shards(runs):
    """Under FSDP the sampling copy is refreshed one gathered parameter at a time: equal to the model before
    and after each update. The KL reference, copied shard by shard, equals the weights it was copied from
    (the model has moved since)."""
    _, two = runs
    r = json.load(open(two / "result.json"))
    assert r["world"] == 2 and r["replica_diff"] == [0.0, 0.0, 0.0]
    assert r["ref_vs_model"] > 1e-4


def test_checkpoint_from_two_ranks_continues_in_one_process(runs):
    _, two = runs
    run([sys.executable, WORKER, "resume", str(two)])  # one process loads what 2 ranks saved
    resumed, cont = json.load(open(two / "resumed.json")), json.load(open(two / "result.json"))
    assert resumed["world"] == 1
    assert resumed["grpo"][0] == pytest.approx(cont["grpo"][1], rel=1e-4, abs=1e-6)
    assert_states_close(load_file(two / "resumed.safetensors"), load_file(two / "state.safetensors"), atol=1e-4)


def _tiny_hf_checkpoint(d):
    """A random Qwen2 model + a byte-level BPE tokenizer.json, as a user's real checkpoint directory would be."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    texts = ["A conversation between User and Assistant. <think> 3 + 4 = 7 </think> <answer> 7 </answer>"] * 20
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens(["<|endoftext|>"])
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    cfg = transformers.Qwen2Config(vocab_size=tk.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(d))


def test_zero_full_from_a_hugging_face_checkpoint(tmp_path):
    import train
    ckpt = tmp_path / "base"
    ckpt.mkdir()
    _tiny_hf_checkpoint(ckpt)
    problems = tmp_path / "gsm8k.jsonl"
    with open(problems, "w") as f:
        for i in range(12):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} plus {i} #### {2 * i}"}) + "\n")
    out = tmp_path / "run"
    summary = train.main(["--preset", "zero-full", "--init", str(ckpt), "--problems", str(problems),
                          "--out_dir", str(out), "--rl_steps=2", "--prompts_per_step=2", "--group_size=2",
                          "--max_new_tokens=6", "--eval_problems=2", "--eval_k=2", "--micro_batch=4",
                          "--eval_every=2", "--ckpt_every=2", "--fused_head=false"])
    assert set(summary) == {"first", "last"} and summary["last"]["step"] == 2
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert all(0.0 <= r["format"] <= 1.0 and r["tokens"] > 0 for r in rows if r["kind"] == "train")
    ck = out / "rl" / "step_000002"
    meta = json.load(open(ck / "nano_r1.json"))
    assert meta["step"] == 2 and meta["model"]["attn"] == "gqa" and meta["model"]["qkv_bias"]
    assert meta["task"] == "gsm8k" and meta["train"]["rl_steps"] == 2 and meta["preset"] == "zero-full"
    # the RL checkpoint loads back through the sampler's loader with its tokenizer, and in transformers
    import sample
    model, tok = sample.load_checkpoint(str(ck))
    assert tok.encode("3 + 4") == train.Tokenizer.from_pretrained(str(ckpt)).encode("3 + 4")
    assert model.cfg.vocab_size == meta["model"]["vocab_size"]
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(ck)).eval()
    ids = torch.tensor([tok.encode("What is 3 + 4?")])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4


def test_zero_full_needs_init():
    import train
    with pytest.raises(SystemExit, match="--init"):
        train.parse_args(["--preset", "zero-full"])


def test_smoke_run_under_torchrun_resumes(tmp_path):
    """train.py end to end on 2 ranks (tokenizer, pretraining, GRPO with gathered sampling copies), stopped after
    3 RL steps and resumed under torchrun from the step-2 checkpoint."""
    out = str(tmp_path / "run")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              os.path.join(REPO, "train.py"), "--preset", "smoke", "--out_dir", out]
    run(launch + ["--halt_after=3"])
    run(launch + ["--resume"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4]
    import sample
    model, tok = sample.load_checkpoint(os.path.join(out, "rl", "step_000004"))  # written by 2 ranks, read by 1
    assert model.cfg.n_layers == 2 and tok.vocab_size == model.cfg.vocab_size
