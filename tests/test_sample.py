"""Tests for sample.py: filtering, stopping, determinism, ragged batches, sampler/trainer log-prob
parity, greedy parity with transformers, and the evaluation metrics."""
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sample  # noqa: E402
from evaluate import evaluate, majority_vote, pass_at_k, summarize  # noqa: E402
from sample import filter_logits, generate, sample_next  # noqa: E402


# ----------------------------------------------------------------------------- helpers

class BigramCache:
    def __init__(self, batch_size):
        self.length, self.batch = 0, torch.arange(batch_size)
        self.selects = []

    def select(self, index):
        self.batch = self.batch[index]
        self.selects.append(len(index))


class BigramModel(torch.nn.Module):
    """Logits depend only on the last token: a cheap stand-in to test the sampling loop itself."""

    def __init__(self, V=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(V, V, generator=g) * 3)  # (V, V)
        self.lm_head = torch.nn.Identity()  # the "hidden state" already is the logits
        self.calls = []

    def make_cache(self, batch_size, max_len):
        return BigramCache(batch_size)

    def forward(self, tokens, cache=None, pos=None, valid=None, return_hidden=False):
        self.calls.append(tokens.shape)
        if cache is not None:
            assert cache.batch.numel() == tokens.size(0)
            cache.length += tokens.size(1)
        return self.table[tokens]  # (B, T, V)


class CharTokenizer:
    """Token i <-> letter chr(97 + i); token 0 decodes to nothing (like a partial byte)."""
    eos_id, pad_id, special_tokens = 1, 0, {}

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids if i != 0)


def tiny_model(attn, **kw):
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(f"tiny-{attn}", **kw)
    return Transformer(cfg).eval()


# ----------------------------------------------------------------------------- filtering

def test_top_k_keeps_exactly_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False], [False, False, True, False, True]]
    assert filter_logits(logits, top_k=5).isfinite().all()


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])  # sorted: .5 .3 .15 .05
    logits = probs.log()
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[False, True, False, False]]
    assert filter_logits(logits, top_p=0.6).isfinite().tolist() == [[False, True, True, False]]
    assert filter_logits(logits, top_p=0.8).isfinite().tolist() == [[False, True, True, False]]
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[False, True, True, True]]
    assert filter_logits(logits, top_p=0.01).isfinite().tolist() == [[False, True, False, False]]
    # top-k first, then top-p renormalised over the k kept: {.5, .3} -> {.625, .375}
    assert filter_logits(logits, top_k=2, top_p=0.6).isfinite().tolist() == [[False, True, False, False]]
    assert filter_logits(logits, top_k=2, top_p=0.7).isfinite().tolist() == [[False, True, True, False]]


def test_sample_next_logprobs_are_under_sampling_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g)
    tok, lp = sample_next(logits, temperature=0.7, top_k=3, generator=g)
    top3 = logits.topk(3).indices
    assert (top3 == tok[:, None]).any(-1).all()
    ref = (logits / 0.7).gather(-1, top3).log_softmax(-1)  # (64, 3)
    want = ref.gather(-1, (top3 == tok[:, None]).float().argmax(-1, keepdim=True))[:, 0]
    torch.testing.assert_close(lp, want)
    tok1, lp1 = sample_next(logits, temperature=1.0, generator=g)
    torch.testing.assert_close(lp1, logits.log_softmax(-1).gather(-1, tok1[:, None])[:, 0])
    tok0, lp0 = sample_next(logits, temperature=0)
    assert torch.equal(tok0, logits.argmax(-1))


def test_sample_frequencies_match_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(20000, 5)
    g = torch.Generator().manual_seed(1)
    tok, _ = sample_next(logits, temperature=1.0, top_p=0.8, generator=g)
    want = filter_logits(logits[:1], top_p=0.8).softmax(-1)[0]
    freq = torch.bincount(tok, minlength=5).float() / len(tok)
    assert freq[want == 0].sum() == 0
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


# ----------------------------------------------------------------------------- loop logic (bigram model)

def test_stop_tokens_lengths_mask_and_truncation():
    m = BigramModel()
    gen = generate(m, [[2, 3], [4]], max_new_tokens=12, temperature=1.0, n=3, stop_tokens=(5, 6), seed=0)
    assert gen.tokens.shape[0] == 6 and gen.tokens.shape[1] == int(gen.lengths.max())
    for r in range(6):
        L = int(gen.lengths[r])
        row = gen.tokens[r].tolist()
        assert gen.mask[r].sum() == L and not gen.mask[r, L:].any()
        assert all(x == 0 for x in row[L:]) and (gen.logprobs[r, L:] == 0).all()
        assert not any(x in (5, 6) for x in row[:L - 1])  # nothing after a stop token
        assert bool(gen.truncated[r]) == (row[L - 1] not in (5, 6))
        assert gen.truncated[r] == (L == 12 and row[L - 1] not in (5, 6))
    assert (gen.logprobs[gen.mask] < 0).all()


def test_stop_strings_end_sequences():
    m = BigramModel(V=8, seed=3)
    prompts = [[2], [3], [4]]
    free = generate(m, prompts, max_new_tokens=20, temperature=1.0, n=4, seed=5)
    tok = CharTokenizer()
    stop = "ce"  # tokens 2 then 4
    gen = generate(m, prompts, max_new_tokens=20, temperature=1.0, n=4, seed=5, stop_strings=[stop],
                   tokenizer=tok)
    found = 0
    for r in range(12):
        text_free = tok.decode(free.tokens[r, :free.lengths[r]].tolist())
        text = tok.decode(gen.tokens[r, :gen.lengths[r]].tolist())
        if stop in text_free:  # same seed + same rows -> same draws up to the stop
            found += 1
            assert text.endswith(stop) and text.count(stop) == 1 and not gen.truncated[r]
            assert text_free.startswith(text)
        else:
            assert text == text_free and gen.truncated[r]
    assert found >= 2


def test_stop_string_checks_are_lazy():
    stops = sample._StopStrings(["xyz"], CharTokenizer())
    calls = []
    stops.tokenizer = SimpleNamespace(decode=lambda ids: calls.append(list(ids)) or CharTokenizer().decode(ids))
    assert not stops.hit([1, 2, 3])  # 'd' cannot end "xyz": only the one-token probe is decoded
    assert calls == [[3]]
    assert stops.hit([5, 23, 24, 25]) and stops.hit([23, 24, 0, 25])  # "...xyz", and across an empty token


def test_seed_determinism_and_compaction():
    m = BigramModel(V=12, seed=2)
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, n=4, stop_tokens=(3,))
    a = generate(m, [[1, 2], [5]], seed=7, **kw)
    b = generate(m, [[1, 2], [5]], seed=7, **kw)
    c = generate(m, [[1, 2], [5]], seed=8, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)
    # with and without compaction give the same samples (one uniform per original row per step);
    # compaction shrinks the decode batch
    prompts = [[1], [2], [3], [4], [5], [6], [7], [8]]
    for temperature in (0, 1.0):
        m.calls.clear()
        g1 = generate(m, prompts, max_new_tokens=10, temperature=temperature, stop_tokens=(3, 4), seed=0)
        batch_sizes = [s[0] for s in m.calls[1:]]
        g2 = generate(m, prompts, max_new_tokens=10, temperature=temperature, stop_tokens=(3, 4), seed=0,
                      compact_frac=2.0)
        assert torch.equal(g1.tokens, g2.tokens) and torch.equal(g1.logprobs, g2.logprobs)
        assert (g1.lengths < 10).sum() >= 2 and min(batch_sizes) < 8


def test_bad_arguments_raise():
    m = BigramModel()
    for kw in [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(n=0),
               dict(max_new_tokens=0), dict(stop_strings=["x"])]:
        with pytest.raises(ValueError):
            generate(m, [[1]], **kw)
    with pytest.raises(ValueError):
        generate(m, [[]])


# ----------------------------------------------------------------------------- metrics

def test_pass_at_k_formula():
    assert pass_at_k(8, 0, 1) == 0 and pass_at_k(8, 8, 8) == 1
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote():
    assert majority_vote(["12", " 12", "13", None, None, None], [1, 1, 0, 0, 0, 0]) == ("12", True)
    assert majority_vote(["7", "8", "8", "7"], [0, 1, 1, 0]) == ("7", False)  # tie -> first seen
    assert majority_vote([None, None], [0, 0]) == (None, False)


def test_summarize_by_bucket():
    def s(bucket, correct, pred, fmt=1.0, length=10, trunc=False):
        return dict(bucket=bucket, correct=correct, pred=pred, format=fmt, length=length, truncated=trunc)
    k = 4
    samples = ([s("E", True, "5"), s("E", True, "5"), s("E", False, "6"), s("E", False, None, 0.0, 30, True)]
               + [s("H", False, "1"), s("H", False, "1"), s("H", True, "2"), s("H", False, "3", length=50)]
               + [s("H", False, None)] * 4)
    res = summarize(samples, k)
    assert res["n"] == 3 and set(res["by_bucket"]) == {"E", "H"}
    assert res["pass@1"] == pytest.approx(3 / 12)
    assert res["cons@k"] == pytest.approx(1 / 3)
    assert res["pass@k"] == pytest.approx(2 / 3)
    assert res["format"] == pytest.approx(11 / 12) and res["truncated"] == pytest.approx(1 / 12)
    e, h = res["by_bucket"]["E"], res["by_bucket"]["H"]
    assert e["pass@1"] == 0.5 and e["cons@k"] == 1.0 and e["length"] == pytest.approx(15.0)
    assert h["pass@1"] == pytest.approx(1 / 8) and h["cons@k"] == 0.0 and h["pass@k"] == 0.5
    assert e["length_correct"] == 10 and e["length_wrong"] == 20


# ----------------------------------------------------------------------------- real models

PROMPTS = [[5, 17, 3, 99, 42, 7, 8], [11, 2], [250, 251, 252, 9], [300]]


@pytest.mark.parametrize("attn", ["mla", "gqa", "moe"])
def test_sampler_trainer_logprob_parity(attn):
    """log-probs from generate (T=1, no filtering) == log_softmax of one full forward pass, no cache."""
    model = tiny_model(attn) if attn != "moe" else _tiny_moe()
    gen = generate(model, PROMPTS, max_new_tokens=12, temperature=1.0, n=3, stop_tokens=(1, 2, 3), seed=0)
    rows = [PROMPTS[r // 3] + gen.tokens[r, :gen.lengths[r]].tolist() for r in range(len(gen.lengths))]
    L = max(len(x) for x in rows)
    full = torch.zeros(len(rows), L, dtype=torch.long)  # (N, L) right-padded
    for i, x in enumerate(rows):
        full[i, :len(x)] = torch.tensor(x)
    with torch.no_grad():
        logp = model(full).log_softmax(-1)  # (N, L, V)
    for r, x in enumerate(rows):
        p, g = len(PROMPTS[r // 3]), int(gen.lengths[r])
        want = logp[r, p - 1:p - 1 + g].gather(-1, full[r, p:p + g, None])[:, 0]  # (g,)
        torch.testing.assert_close(gen.logprobs[r, :g], want, atol=1e-4, rtol=0)


def _tiny_moe():
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("tiny-moe")).eval()


@pytest.mark.parametrize("attn", ["mla", "gqa"])
def test_ragged_batch_equals_one_at_a_time(attn):
    model = tiny_model(attn)
    batch = generate(model, PROMPTS, max_new_tokens=10, temperature=0, n=2, stop_tokens=(7,))
    for i, p in enumerate(PROMPTS):
        one = generate(model, [p], max_new_tokens=10, temperature=0, stop_tokens=(7,))
        for j in range(2):
            r = i * 2 + j
            L = int(one.lengths[0])
            assert int(batch.lengths[r]) == L and bool(batch.truncated[r]) == bool(one.truncated[0])
            assert batch.tokens[r, :L].tolist() == one.tokens[0, :L].tolist()
            torch.testing.assert_close(batch.logprobs[r, :L], one.logprobs[0, :L], atol=1e-5, rtol=0)


def test_compiled_decode_step_matches_plain_loop(monkeypatch):
    monkeypatch.setattr(sample, "COMPILE_BACKEND", "eager")  # CPU: checks the plumbing, not inductor
    model = tiny_model("gqa")
    kw = dict(max_new_tokens=5, temperature=1.0, top_k=20, n=2, stop_tokens=(4, 5), seed=3)
    a = generate(model, PROMPTS[:2], **kw)
    b = generate(model, PROMPTS[:2], compile=True, **kw)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor/CUDA fast path needs a GPU")
def test_compiled_decode_step_on_gpu():
    model = tiny_model("mla").cuda()
    kw = dict(max_new_tokens=16, temperature=0, n=2)
    a = generate(model, PROMPTS, **kw)
    b = generate(model, PROMPTS, compile=True, **kw)
    assert torch.equal(a.tokens, b.tokens)


def _hf_greedy_equal(hf_model, tmp_path):
    from model import Transformer
    hf_model.eval().save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(str(tmp_path)).eval()
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79]]
    gen = generate(ours, prompts, max_new_tokens=12, temperature=0)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                                    eos_token_id=None)
        assert gen.tokens[i].tolist() == out[0, len(p):].tolist()


def test_greedy_matches_transformers_qwen2(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, rope_theta=10000.0)
    hf = Qwen2ForCausalLM(cfg)
    for p in hf.parameters():  # larger weights than the default init so greedy paths are not flat
        p.data.normal_(0, 0.2)
    _hf_greedy_equal(hf, tmp_path)


def test_greedy_matches_transformers_deepseek_v3(tmp_path):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    torch.manual_seed(0)
    cfg = DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                           num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4,
                           num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                           n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                           qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=256,
                           tie_word_embeddings=False, rope_scaling=None)
    hf = DeepseekV3ForCausalLM(cfg)
    for p in hf.parameters():
        p.data.normal_(0, 0.2)
    _hf_greedy_equal(hf, tmp_path)


# ----------------------------------------------------------------------------- evaluate end to end

class ByteTokenizer:
    """One token per character (ids < 256); 256 = eos, 257 = pad."""
    eos_id, pad_id, special_tokens = 256, 257, {}

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i < 256)


class ScriptModel(BigramModel):
    """Whatever the prompt, every row writes the same scripted completion (then eos)."""

    def __init__(self, script):
        super().__init__(V=258)
        self.script = script + [256]

    def forward(self, tokens, cache=None, pos=None, valid=None, return_hidden=False):
        B, T = tokens.shape
        if cache.length == 0:
            self.prompt_len = T
        step = min(cache.length + T - self.prompt_len, len(self.script) - 1)
        cache.length += T
        logits = torch.full((B, T, 258), -10.0)  # (B, T, V)
        logits[:, :, self.script[step]] = 10.0
        return logits


def test_evaluate_end_to_end():
    from tasks import Problem
    tok = ByteTokenizer()
    completion = " <think> 17*23 is 391 </think> <answer> 391 </answer>"
    model = ScriptModel(tok.encode(completion + " trailing text"))  # the stop string must cut this
    problems = [Problem("What is 17*23?", "391", "multiplication", "E", {}),
                Problem("What is 17*24?", "408", "multiplication", "H", {}),
                Problem("What is 1*391?", "391", "multiplication", "H", {})]
    res = evaluate(model, tok, problems, k=3, max_new_tokens=80, batch_size=6)
    assert res["pass@1"] == pytest.approx(2 / 3) and res["cons@k"] == pytest.approx(2 / 3)
    assert res["pass@k"] == pytest.approx(2 / 3) and res["format"] == 1.0 and res["truncated"] == 0.0
    assert res["length"] == len(completion)
    assert res["by_bucket"]["E"]["pass@1"] == 1.0 and res["by_bucket"]["H"]["pass@1"] == 0.5
    assert len(res["samples"]) == 9 and all(s["completion"] == completion for s in res["samples"])
    assert [s["correct"] for s in res["samples"][3:6]] == [False] * 3
    short = evaluate(model, tok, problems[:1], k=2, max_new_tokens=10)
    assert short["truncated"] == 1.0 and short["format"] == 0.0 and short["pass@1"] == 0.0


def test_load_checkpoint_and_cli(tmp_path, capsys):
    """Our checkpoint layout: config.json {"model": ModelConfig fields}, model.safetensors, tokenizer/."""
    import dataclasses
    import json
    from safetensors.torch import save_file
    from tokenizer import Tokenizer
    tok = Tokenizer.train(["User: 12 * 34 = 408. Assistant: <think> ok </think> <answer> 408 </answer>"] * 4, 280)
    model = tiny_model("mla", vocab_size=tok.vocab_size)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model.cfg), "step": 3}))
    tok.save(str(tmp_path / "tokenizer"))
    loaded, tok2 = sample.load_checkpoint(str(tmp_path))
    prompt = tok.encode("User: 12 * 34 =")
    assert tok2.encode("User: 12 * 34 =") == prompt
    stops = sample.stops_for(tok)[0]
    a = generate(model, [prompt], max_new_tokens=6, temperature=0, stop_tokens=stops)
    b = generate(loaded, [prompt], max_new_tokens=6, temperature=0, stop_tokens=stops)
    assert torch.equal(a.tokens, b.tokens)
    sample.main(["--ckpt", str(tmp_path), "--prompt", "User: 12 * 34 =", "--max-new-tokens", "6",
                 "--temperature", "0", "--template", "none"])  # raw text; the R1-Zero default: test_eval.py
    out = capsys.readouterr().out
    assert out == "User: 12 * 34 =" + tok.decode(a.tokens[0].tolist()) + "\n"
    with pytest.raises(FileNotFoundError):
        sample.load_checkpoint(str(tmp_path / "missing"))
