"""Tests for checkpoint.py: our checkpoints are Hugging Face directories that transformers loads to the same
logits and token ids (a Qwen2-shaped and a DeepSeek-V3-shaped model, with a from-scratch tokenizer); the one
loader reads ours (exactly) and foreign directories; the optimizer state round-trips; writes are atomic; the
streamed safetensors writer; loading never random-initialises real tensors."""
import json
import os

import pytest
import torch

import checkpoint
import tasks
from model import ModelConfig, Transformer
from tokenizer import Tokenizer

TEXTS = ["What is 17 * 23? <think> 17 * 23 = 391 </think> <answer> 391 </answer>", "  spaces\n\nand tabs\t!",
         "Café naïve 中文 😀 <|eos|><|pad|>", "count the r in strawberry: s t r a w b e r r y", ""]


QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tok(pattern=None):
    text = "".join(d for _, d in zip(range(300), tasks.corpus_stream(seed=0))) + " ".join(TEXTS)
    return Tokenizer.train([text], 300, **({"pattern": pattern} if pattern else {}))


@pytest.fixture(scope="module")
def tok():
    """A from-scratch smoke-sized tokenizer (as train.py's smoke preset trains)."""
    return train_tok()


@pytest.fixture(scope="module")
def qwen_tok():
    """A Qwen2-style tokenizer (Qwen2's split regex, NFC): what a Qwen2-shaped run (--init a Qwen dir) carries.
    transformers maps model_type qwen2 to its Qwen2Tokenizer, which rebuilds this pre-tokenizer itself."""
    t = train_tok(QWEN2_PAT)
    return Tokenizer(t.ranks, t.special_tokens, QWEN2_PAT, nfc=True)


def random_model(preset, tok, **kw):
    torch.manual_seed(0)
    m = Transformer(ModelConfig.from_preset(preset, vocab_size=tok.vocab_size, **kw))
    with torch.no_grad():
        for layer in m.layers:
            if hasattr(layer.ffn, "bias"):  # a router bias that changes which experts are picked
                layer.ffn.bias.copy_(torch.randn_like(layer.ffn.bias) * 0.3)
            if hasattr(layer.attn, "wq") and getattr(layer.attn.wq, "bias", None) is not None:
                layer.attn.wq.bias.normal_()
    return m.eval()


@pytest.mark.parametrize("preset,kind,kw", [
    ("tiny-gqa", "qwen2", {}),  # Qwen2-shaped: GQA with q/k/v biases
    ("tiny-gqa", "llama", {"qkv_bias": False, "rope_interleave": True, "tie_embeddings": True}),
    ("tiny-moe", "deepseek_v3", {}),  # our from-scratch MLA + MoE (sigmoid routing, groups, bias, q_lora)
])
def test_transformers_loads_our_checkpoint(tmp_path, tok, qwen_tok, preset, kind, kw):
    transformers = pytest.importorskip("transformers")
    tok = qwen_tok if kind == "qwen2" else tok
    ours = random_model(preset, tok, **kw)
    path = str(tmp_path / "step_000003")
    meta = {"step": 3, "task": "count", "preset": "smoke", "train": {"rl_lr": 1e-5}}
    checkpoint.save(path, ours, tok, meta)
    assert sorted(os.listdir(path)) == ["config.json", "generation_config.json", "model.safetensors",
                                        "nano_r1.json", "tokenizer.json", "tokenizer_config.json"]
    assert json.load(open(os.path.join(path, "config.json")))["model_type"] == kind
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        ref = ours(ids)
        assert (hf(ids).logits.float() - ref).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    for t in TEXTS:
        assert hf_tok.encode(t, add_special_tokens=False) == tok.encode(t), t
        assert hf_tok.decode(tok.encode(t)) == t
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id
    gen = transformers.GenerationConfig.from_pretrained(path)
    assert gen.eos_token_id == tok.eos_id and gen.temperature == 0.6
    # ... and our loader reads it back exactly
    model, tok2, meta2 = checkpoint.load(path)
    assert model.cfg == ours.cfg and meta2["step"] == 3 and meta2["task"] == "count" and meta2["preset"] == "smoke"
    assert meta2["train"] == {"rl_lr": 1e-5}
    with torch.no_grad():
        assert torch.equal(model(ids), ref)
    assert all(tok2.encode(t) == tok.encode(t) for t in TEXTS) and tok2.special_tokens == tok.special_tokens
    if ours.cfg.tie_embeddings:
        assert model.lm_head.weight is model.embed.weight
    bf16, _, _ = checkpoint.load(path, dtype=torch.bfloat16)
    assert bf16.embed.weight.dtype == torch.bfloat16
    assert all(l.ffn.bias.dtype == torch.float32 for l in bf16.layers if hasattr(l.ffn, "bias"))


def test_foreign_hugging_face_directory(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    hf.save_pretrained(str(tmp_path))
    from tokenizer import save_hf
    save_hf(tok, str(tmp_path))
    model, tok2, meta = checkpoint.load(str(tmp_path))
    assert meta == {} and model.cfg.qkv_bias and tok2.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    ids = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9), generator=g)  # (B, T+1)
    logits = model(ids[:, :-1])  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_optimizer_state_round_trips(tmp_path, tok):
    model = random_model("tiny-moe", tok).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, opt, 0)
    checkpoint.save(str(tmp_path / "c"), model, tok, {"step": 1}, optimizer=opt)
    after = [train_step(model, opt, s) for s in (1, 2)]
    fresh, _, _ = checkpoint.load(str(tmp_path / "c"))
    fresh.train()
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1.0)  # lr comes back from the checkpoint
    checkpoint.load_optimizer(fresh, opt2, str(tmp_path / "c"))
    assert opt2.param_groups[0]["lr"] == 1e-2
    assert [train_step(fresh, opt2, s) for s in (1, 2)] == pytest.approx(after, rel=1e-6, abs=1e-7)
    for (n, a), b in zip(model.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_save_is_atomic(tmp_path, tok, monkeypatch):
    model = random_model("tiny-mla", tok, dim=32)
    path = str(tmp_path / "c")
    checkpoint.save(path, model, tok, {"step": 1})
    saved = model.embed.weight.detach().clone()
    write = checkpoint.SafetensorsWriter.write
    calls = []

    def dies(self, name, t):  # a crash (kill, full disk) in the middle of the next save
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(self, name, t)

    monkeypatch.setattr(checkpoint.SafetensorsWriter, "write", dies)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, tok, {"step": 2})
    old, _, meta = checkpoint.load(path)  # the previous checkpoint is whole
    assert meta["step"] == 1 and torch.equal(old.embed.weight, saved)
    assert sorted(os.listdir(tmp_path)) == ["c", "c.tmp"]  # the partial one is beside it, never in its place


def test_streamed_safetensors_equal_save_file(tmp_path):
    from safetensors.torch import load_file
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.randn(2, 2).bfloat16(), "d": torch.tensor(2.)}
    w = checkpoint.SafetensorsWriter(str(tmp_path / "x.safetensors"), [(k, v.shape, v.dtype) for k, v in
                                                                        tensors.items()], {"k": "v"})
    for k, v in tensors.items():
        w.write(k, v)
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    w = checkpoint.SafetensorsWriter(str(tmp_path / "y.safetensors"), [("a", (3, 5), torch.float32)])
    with pytest.raises(RuntimeError, match="out of order"):
        w.write("a", torch.zeros(5, 3))


def test_load_never_random_initialises_real_tensors(tmp_path, tok, monkeypatch):
    checkpoint.save(str(tmp_path), random_model("tiny-moe", tok), tok)
    devices = []
    normal = torch.nn.init.normal_
    def spy(*a, **k):
        t = a[0] if a else k["tensor"]
        devices.append(t.device.type)
        return normal(*a, **k)
    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    checkpoint.load(str(tmp_path))
    assert devices and set(devices) == {"meta"}


def test_loader_errors_are_one_line(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        checkpoint.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        checkpoint.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'; supported: .*deepseek_v3"):
        checkpoint.load(str(tmp_path))


def test_previous_layout_still_loads(tmp_path, tok):
    """config.json {"model": ModelConfig fields, "step"}, model.safetensors under our names, tokenizer/."""
    import dataclasses
    from safetensors.torch import save_file
    model = random_model("tiny-moe", tok)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model.cfg), "step": 7}))
    tok.save(str(tmp_path / "tokenizer"))
    back, tok2, meta = checkpoint.load(str(tmp_path))
    ids = torch.randint(0, tok.vocab_size, (1, 9))
    with torch.no_grad():
        assert meta == {"step": 7} and torch.equal(back(ids), model(ids))
    assert tok2.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_tokenizer_json_gives_our_ids(tmp_path):
    """save_hf at a vocabulary with many merges: transformers' tokenizer gives our ids on held-out corpus text,
    special tokens, random unicode, and decodes back."""
    transformers = pytest.importorskip("transformers")
    import itertools
    import random
    from tokenizer import save_hf
    docs = list(itertools.islice(tasks.corpus_stream(seed=0), 600))
    tok = Tokenizer.train(["".join(docs[:400])], 1024)
    save_hf(tok, str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    rng = random.Random(0)
    noise = ["".join(chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FF), rng.randint(0x4E00, 0x4FFF)]))
                     for _ in range(80)) for _ in range(20)]
    for t in docs[400:] + TEXTS + noise:
        ids = tok.encode(t)
        assert hf.encode(t, add_special_tokens=False) == ids, t[:80]
        assert hf.decode(ids) == tok.decode(ids)
    assert len(hf) == tok.vocab_size and hf.convert_tokens_to_ids("<answer>") == tok.token_id("<answer>")
