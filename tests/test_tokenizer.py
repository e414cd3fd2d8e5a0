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


# ----------------------------------------------------------------------------------------------
# decode of ids the vocabulary lacks; chat templates against transformers' apply_chat_template

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _byte_level_json(added, pattern=QWEN2_PAT):
    """A minimal Qwen2-style tokenizer.json written by hand: the 256 byte tokens, no merges, added specials."""
    from tokenizer import bytes_to_unicode
    vocab = {c: b for b, c in bytes_to_unicode().items()}
    added_tokens = [{"id": 256 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for i, t in enumerate(added)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}, byte_level]},
            "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": []}}


def test_decode_skips_ids_beyond_the_vocabulary():
    """An embedding larger than the tokenizer (Qwen2.5: 151,936 rows, ~151,665 ids): the gap ids decode to
    nothing, as in Hugging Face tokenizers, instead of raising tiktoken's KeyError."""
    tj = _byte_level_json(QWEN_SPECIALS)
    from tokenizer import _from_tokenizer_json
    ours = _from_tokenizer_json(tj, {"eos_token": "<|im_end|>"}, "tokenizer.json")
    hf = tokenizers.Tokenizer.from_str(json.dumps(tj))
    assert ours.vocab_size == 261
    ids = ours.encode("x = 17<|im_end|>")
    gap = [261, 300, 150000]  # rows an embedding of any larger size would have
    mixed = ids[:2] + gap + ids[2:] + [-1]
    assert ours.decode(mixed) == "x = 17<|im_end|>"
    assert ours.decode(mixed[:-1]) == hf.decode(mixed[:-1], skip_special_tokens=False)
    assert ours.decode(gap) == "" and ours.decode([]) == ""
    tok = Tokenizer.train(["hello world 123"] * 3, 300)  # our own format too
    assert tok.decode(tok.encode("hello") + [tok.vocab_size, 10 ** 6]) == "hello"


QWEN_STYLE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- elif message.role not in ['user', 'assistant'] %}
        {{- raise_exception('unknown role: ' + message.role) }}
    {%- endif %}
    {%- if message.tool_calls is defined %}
        {{- raise_exception('a tool_calls key set to None must be dropped') }}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content }}
    {%- if message.meta is defined %}
        {{- ' ' + message.meta | tojson }}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# written without "-" whitespace control: only trim_blocks + lstrip_blocks keep the output free of stray newlines
R1_DISTILL_STYLE = """{% if not add_generation_prompt is defined %}
  {% set add_generation_prompt = false %}
{% endif %}
{% set ns = namespace(system='') %}
{% for m in messages %}
  {% if m['role'] == 'system' %}
    {% set ns.system = ns.system + m['content'] %}
  {% endif %}
{% endfor %}
{{ bos_token }}{{ ns.system }}
{% for m in messages %}
  {% if m['role'] == 'user' %}
<｜User｜>{{ m['content'] }}
  {% elif m['role'] == 'assistant' %}
    {% set content = m['content'] %}
    {% if '</think>' in content %}
      {% set content = content.split('</think>')[-1] %}
    {% endif %}
<｜Assistant｜>{{ content }}<｜end▁of▁sentence｜>
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<｜Assistant｜><think>
{% endif %}
"""

LLAMA3_STYLE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\nToday Date: " + date_string + "\\n\\n" }}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ('user', 'assistant') %}
        {{- raise_exception("roles must be user or assistant, got " + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

TEMPLATE_CASES = {  # family: (template, added tokens, tokenizer_config.json special tokens)
    "qwen2.5-instruct": (QWEN_STYLE, QWEN_SPECIALS, {"bos_token": None, "eos_token": "<|im_end|>",
                                                     "pad_token": "<|endoftext|>"}),
    "r1-distill": (R1_DISTILL_STYLE, R1_SPECIALS, {"bos_token": {"content": R1_SPECIALS[0], "__type": "AddedToken"},
                                                   "eos_token": R1_SPECIALS[1]}),
    "llama3-instruct": (LLAMA3_STYLE, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                       "<|end_header_id|>", "<|eot_id|>"],
                        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
}

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  Be brief.  "},
     {"role": "user", "content": "Solve x^2 = 4.", "meta": {"é": "<b>"}},
     {"role": "assistant", "content": "<think>\nx = 2 or -2\n</think>\n\n\\boxed{\\pm 2}", "tool_calls": None},
     {"role": "user", "content": "  And x^2 = 9?\n"}],
]


def _template_dir(tmp_path, family):
    template, added, specials = TEMPLATE_CASES[family]
    d = tmp_path / family
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(_byte_level_json(added), ensure_ascii=False))
    config = {**specials, "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast"}
    (d / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return d


@pytest.mark.parametrize("family", list(TEMPLATE_CASES))
def test_chat_template_matches_transformers(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    d = _template_dir(tmp_path, family)
    ours = Tokenizer.from_pretrained(str(d))
    hf = transformers.AutoTokenizer.from_pretrained(str(d))
    assert ours.chat_template == TEMPLATE_CASES[family][0]
    for chat in CHATS:
        for gen in (True, False):
            want = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(chat, add_generation_prompt=gen) == want, (family, chat, gen)
    text = ours.apply_chat_template(CHATS[1])
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    bad = [{"role": "robot", "content": "x"}] if family != "r1-distill" else None
    if bad:  # raise_exception reaches the caller as jinja2's TemplateError, as in transformers
        import jinja2
        with pytest.raises(jinja2.TemplateError, match="robot"):
            ours.apply_chat_template(bad)
        with pytest.raises(jinja2.TemplateError, match="robot"):
            hf.apply_chat_template(bad, tokenize=False)


def test_chat_template_literal_text(tmp_path):
    """The rendered text itself, written out by hand (so a renderer wrong the same way as transformers fails)."""
    import datetime
    r1 = Tokenizer.from_pretrained(str(_template_dir(tmp_path, "r1-distill")))
    assert r1.apply_chat_template(CHATS[1]) == (
        "<｜begin▁of▁sentence｜>  Be brief.  \n<｜User｜>Solve x^2 = 4.\n<｜Assistant｜>\n\n\\boxed{\\pm 2}"
        "<｜end▁of▁sentence｜>\n<｜User｜>  And x^2 = 9?\n\n<｜Assistant｜><think>\n")  # block-tag lines vanish
    qwen = Tokenizer.from_pretrained(str(_template_dir(tmp_path, "qwen2.5-instruct")))
    assert qwen.apply_chat_template(CHATS[0]) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                                  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert '{"é": "<b>"}' in qwen.apply_chat_template(CHATS[1])  # tojson: no ASCII or HTML escaping
    llama = Tokenizer.from_pretrained(str(_template_dir(tmp_path, "llama3-instruct")))
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert llama.apply_chat_template(CHATS[0], add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        f"Today Date: {today}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>")
    assert "Today Date: 01 Jan 2025" in llama.apply_chat_template(CHATS[0], date_string="01 Jan 2025")
    # the template survives save/load in our own format; without one, the built-in format is used
    qwen.save(str(tmp_path / "saved"))
    assert Tokenizer.load(str(tmp_path / "saved")).apply_chat_template(CHATS[1]) == qwen.apply_chat_template(CHATS[1])
    plain = Tokenizer.train(["hello world 123"] * 3, 300)
    assert plain.apply_chat_template(CHATS[0]) == plain.chat_prompt(CHATS[0])


def test_chat_template_sandbox_and_file(tmp_path):
    """Hub templates are untrusted code: the sandbox refuses attribute escapes. chat_template.jinja wins."""
    import jinja2
    from tokenizer import render_chat_template
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.__class__.__mro__ }}", CHATS[0])
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: templates cannot mutate the caller's data
        render_chat_template("{% set _ = messages.append(1) %}", CHATS[0])
    d = _template_dir(tmp_path, "qwen2.5-instruct")
    (d / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert Tokenizer.from_pretrained(str(d)).apply_chat_template(CHATS[0]) == "[What is 2+2?]"
    assert render_chat_template("{% generation %}A{% endgeneration %}", CHATS[0]) == "A"
