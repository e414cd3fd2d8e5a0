"""Tests for tokenizer.py: the BPE trainer, save/load, and tokenizer.json parity with HF `tokenizers`."""

import itertools
import json
import random
import time
import unicodedata

import pytest

import tasks
from tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe

tokenizers = pytest.importorskip("tokenizers")  # a test dependency (pyproject [test] extra)
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

QWEN2_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
DSV3_PATS = [r"\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+",
             r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""]
R1_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog. Don't you think it's great? I'LL GO.",
    "def f(x):\n    return x ** 2  # square\n\n\nif __name__ == '__main__':\n\tprint(f(12345))",
    "3141592653589793238462643383279 + 12 = 0.5e-10, 1,234,567.89 and 2024-11-21",
    "中文测试：今天天气很好。日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and symbols ∑∫√ ≠ ≤ → ★",
    "   leading spaces   and    runs\t\t of tabs\r\n\r\nwindows newlines\n\n\n   \n trailing   ",
    "Café naïve résumé e\u0301 a\u0308 (combining marks) Ω Ａ full-width ＡＢＣ １２３",
    "<think> reasoning </think> <answer> 42 </answer><｜User｜>hi<｜Assistant｜><think>\n",
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 12*34?<｜Assistant｜>408<｜end▁of▁sentence｜>",
    "Привет мир! مرحبا بالعالم שלום עולם ✓ naïve—dash “quotes” ‘single’ …",
    "x=[1,2,3];y={'a':(4,5)}; z = x[0]+y['a'][1]//7 % 3 != 0 && a||b >>= 2 <!-- -->",
    "",
    " ",
    "\n",
]


def _train_texts():
    rng = random.Random(0)
    docs = list(itertools.islice(tasks.corpus_stream(0), 400))
    words = " ".join(TEXTS).split()
    docs += [" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)]
    return docs + TEXTS * 5


def _build_hf(tmp_path, family):
    """A tokenizer.json in the given family's style, trained locally with `tokenizers`."""
    tk = tokenizers.Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    specials_first = []
    if family == "qwen2":
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PAT), "isolated"), bl])
    elif family == "llama3":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PAT), "isolated"), bl])
    elif family == "deepseek_v3":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), "isolated") for p in DSV3_PATS] + [bl])
        specials_first = R1_SPECIALS[:2]  # DeepSeek: bos/eos are ids 0 and 1, inside the vocab
    elif family == "gpt2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False, special_tokens=specials_first,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_train_texts(), trainer)
    tk.add_special_tokens([s for s in R1_SPECIALS if s not in specials_first] + ["<answer>", "</answer>"])
    d = tmp_path / family
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": R1_SPECIALS[0]}, "eos_token": R1_SPECIALS[1]}))
    return tk, d


@pytest.mark.parametrize("family", ["qwen2", "llama3", "deepseek_v3", "gpt2"])
def test_from_pretrained_matches_hf(tmp_path, family):
    hf, d = _build_hf(tmp_path, family)
    ours = Tokenizer.from_pretrained(str(d))
    assert Tokenizer.from_pretrained(str(d / "tokenizer.json")).encode(TEXTS[0]) == ours.encode(TEXTS[0])
    rng = random.Random(1)
    texts = TEXTS + [" ".join(rng.sample(TEXTS, 3)) for _ in range(20)]
    for t in texts:
        assert ours.encode(t) == hf.encode(t).ids, f"{family}: ids differ on {t!r}"
        assert ours.decode(ours.encode(t)) == hf.decode(hf.encode(t).ids, skip_special_tokens=False)
    assert ours.encode_batch(texts[:3]) == [hf.encode(t).ids for t in texts[:3]]
    assert ours.bos_id == hf.token_to_id(R1_SPECIALS[0]) and ours.eos_id == hf.token_to_id(R1_SPECIALS[1])
    assert ours.token_id("<think>") == hf.token_to_id("<think>")
    assert ours.vocab_size == hf.get_vocab_size()
    # R1-distill chat format, generation prompt pre-fills <think>
    p = ours.chat_prompt([{"role": "user", "content": "What is 2+2?"}])
    assert p == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    ids = ours.encode(p)
    assert ids[0] == ours.bos_id and ours.token_id("<｜User｜>") in ids and ids[-2] == ours.token_id("<think>")


def _random_unicode(rng, n):
    ranges = [(0x20, 0x7E), (0x0A, 0x0D), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x0300, 0x036F),
              (0xE000, 0xE0FF), (0x10000, 0x1007F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_roundtrip_random_unicode(tmp_path):
    rng = random.Random(0)
    strings = [_random_unicode(rng, rng.randint(0, 60)) for _ in range(300)]
    trained = Tokenizer.train(_train_texts(), 600)
    _, d = _build_hf(tmp_path, "deepseek_v3")
    ds = Tokenizer.from_pretrained(str(d))
    _, d = _build_hf(tmp_path, "qwen2")
    qwen = Tokenizer.from_pretrained(str(d))
    for s in strings:
        assert trained.decode(trained.encode(s)) == s
        assert ds.decode(ds.encode(s)) == s
        assert qwen.decode(qwen.encode(s)) == unicodedata.normalize("NFC", s)


def test_train_specials_digits_save_load(tmp_path):
    docs = list(itertools.islice(tasks.corpus_stream(0), 1500))
    t0 = time.time()
    tok = Tokenizer.train(docs, 1000)
    assert time.time() - t0 < 20
    assert tok.vocab_size <= 1000
    for s in SPECIAL_TOKENS:  # every special token is one token, recognised inside text
        assert tok.encode(f"a{s}b")[1] == tok.token_id(s) == tok.special_tokens[s]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(tok.special_tokens[s] for s in SPECIAL_TOKENS[:3])
    assert all(sum(ch.isdigit() for ch in t.decode("utf-8", "replace")) <= 1 for t in tok.ranks)
    ids = tok.encode("12345 * 678 = 8369910")
    assert [tok.decode([i]).strip() for i in ids if tok.decode([i]).strip().isdigit()] == list("123456788369910")
    text = docs[3]
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode()) / 1.5  # merges actually compress
    tok.save(str(tmp_path / "tok"))
    tok2 = Tokenizer.load(str(tmp_path / "tok"))
    assert tok2.encode(text) == tok.encode(text) and tok2.special_tokens == tok.special_tokens
    assert Tokenizer.from_pretrained(str(tmp_path / "tok")).encode(text) == tok.encode(text)
    with pytest.raises(KeyError):
        tok.token_id("not a single token at all")
    with pytest.raises(ValueError):
        Tokenizer.train(docs[:10], 100)


def test_train_bpe_merges_most_frequent_pair_first():
    ranks = train_bpe({b"abab": 10, b"ab": 5, b"cd": 3}, 3)
    assert ranks[b"ab"] == 256 and ranks[b"abab"] == 257 and ranks[b"cd"] == 258
    assert len(ranks) == 259
    assert len(train_bpe({b"xy": 1}, 50)) == 257  # stops when no pair is left


def test_chat_prompt_fallback_and_errors():
    tok = Tokenizer.train(["hello world 123"] * 3, 300)
    p = tok.chat_prompt([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think> x </think> yo"},
                         {"role": "user", "content": "again"}])
    assert p == "<|bos|>User: hi\nAssistant: yo<|eos|>\nUser: again\nAssistant:"
    with pytest.raises(ValueError, match="role"):
        tok.chat_prompt([{"role": "robot", "content": "x"}])


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_malformed_and_unsupported_files(tmp_path):
    _, d = _build_hf(tmp_path, "qwen2")
    good = json.loads((d / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.from_pretrained(_write(tmp_path, "a.json", "{not json"))
    with pytest.raises(ValueError, match="no 'model'"):
        Tokenizer.from_pretrained(_write(tmp_path, "b.json", {"version": "1.0"}))
    cases = [
        ("model", {"type": "WordPiece", "vocab": {"a": 0}}, "unsupported model type"),
        ("pre_tokenizer", {"type": "Metaspace", "replacement": "▁"}, "unsupported pre-tokenizer"),
        ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Removed", "invert": False}, "Split"),
        ("pre_tokenizer", None, "no pre_tokenizer"),
        ("normalizer", {"type": "NFKC"}, "normalizer"),
    ]
    for key, value, msg in cases:
        bad = dict(good, **{key: value})
        with pytest.raises(ValueError, match=msg):
            Tokenizer.from_pretrained(_write(tmp_path, "c.json", bad))
    bad = json.loads(json.dumps(good))
    bad["model"]["vocab"]["ｘ"] = 99999  # a full-width char: not a byte-level alphabet string
    with pytest.raises(ValueError, match="byte-level alphabet"):
        Tokenizer.from_pretrained(_write(tmp_path, "d.json", bad))
    bad = json.loads(json.dumps(good))
    bad["model"]["vocab"] = {k: v for k, v in bad["model"]["vocab"].items() if len(k) > 1 or k in "abc"}
    with pytest.raises(ValueError, match="single-byte"):
        Tokenizer.from_pretrained(_write(tmp_path, "e.json", bad))
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(str(tmp_path))
