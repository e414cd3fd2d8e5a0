"""
tokenizer.py: byte-level BPE tokenizers with tiktoken inside.

Two ways to get a Tokenizer:
  - Tokenizer.train(texts, vocab_size): our own byte-level BPE trainer for the from-scratch presets.
    Digits are always single tokens (a token holds at most one digit, optionally after one space:
    " 3"), so arithmetic stays learnable; the vocabulary carries the special tokens
    <|bos|> <|eos|> <|pad|> <think> </think> <answer> </answer> after the merged tokens. On a
    homogeneous corpus the vocabulary may stop short of vocab_size (no pair left to merge); read
    tok.vocab_size.
  - Tokenizer.from_pretrained(path): a Hugging Face tokenizer.json (byte-level BPE as used by
    Qwen2/2.5, Llama-3, DeepSeek-V3/R1) turned into a tiktoken Encoding: ranks from the vocabulary,
    added tokens as specials, the family's pre-tokenizer (one regex, or a sequence of Split
    pre-tokenizers done in Python with each piece then BPE-encoded by tiktoken).

Simplifications vs production tokenizers:
  1. Only byte-level BPE; WordPiece/Unigram/SentencePiece-BPE files are refused with a clear error.
  2. Supported pre-tokenizers: Split (Isolated, not inverted), ByteLevel (no prefix space), and
     Sequences of them. Supported normalizers: none or NFC.
  3. Merge priority is taken to equal token id order (true for tiktoken-derived and HF-trained
     vocabularies). tiktoken merges by rank of the merged bytes, HF by pair rank; these agree on
     such vocabularies (tested against `tokenizers`).
  4. The trainer merges on a table of unique pre-token chunks (counted once); ties in pair counts
     are broken by the smaller pair, so training is deterministic.
  5. Chat templates: a checkpoint's own Jinja template (tokenizer_config.json "chat_template" or
     chat_template.jinja) is rendered as transformers renders it (sandboxed jinja2, trim_blocks, lstrip_blocks,
     raise_exception, strftime_now, tojson, the named special tokens), minus its tool-calling and
     assistant-mask extras. Without one, chat_prompt() writes the R1-distill format or a plain fallback.
  6. encode() never adds bos/eos (tokenizer.json post-processors are ignored); a pre-token piece
     that is itself in the vocabulary maps to that token (tiktoken's rule = HF ignore_merges).
  7. decode() skips ids the vocabulary lacks (e.g. Qwen2.5's embedding rows 151665-151935 past its
     tokenizer), as Hugging Face tokenizers do, so a sampled out-of-vocabulary id never crashes a run.

Use:
    tok = Tokenizer.train(itertools.islice(tasks.corpus_stream(0), 20000), vocab_size=1024)
    tok.save("runs/tok"); tok = Tokenizer.load("runs/tok")
    tok = Tokenizer.from_pretrained("path/to/DeepSeek-R1-Distill-Qwen-1.5B")
    ids = tok.encode("User: hi <think>"); text = tok.decode(ids)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)

Shape letters: none; no tensors live here (token ids are Python lists of ints).
"""

import base64
import datetime
import functools
import heapq
import itertools
import json
import os
import time
import unicodedata
from collections import Counter
from typing import Iterable

import regex
import tiktoken

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<think>", "</think>", "<answer>", "</answer>"]

# From-scratch split pattern: GPT-4 style, but every digit is its own chunk (at most one leading space
# attached: " 3"), so no token ever holds two digits.
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
           r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MATCH_ALL = r"""[\s\S]+"""  # used to BPE one already-split piece with tiktoken

# R1-distill chat pieces (DeepSeek's full-width bars and "▁" spaces).
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
# Validity of byte values in UTF-8: these never occur, so a vocabulary may omit them.
_NEVER_IN_UTF8 = {0xC0, 0xC1} | set(range(0xF5, 0x100))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level tokenizer.json vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


# ----------------------------------------------------------------------------------------------
# BPE training


def _count_chunks(texts: Iterable[str], pattern: str) -> Counter:
    """Frequency of every pre-token chunk (as bytes) over the texts; special tokens are cut out."""
    pat = regex.compile(pattern)
    special = regex.compile("|".join(regex.escape(s) for s in SPECIAL_TOKENS))
    counts: Counter = Counter()
    for text in texts:
        for part in special.split(text):
            start = 0
            while start < len(part):  # ~1 MB slices cut after a newline bound peak memory on huge texts
                end = part.find("\n", start + 1_000_000) + 1 or len(part)
                counts.update(pat.findall(part, start, end))
                start = end
    return Counter({c.encode("utf-8"): n for c, n in counts.items()})


def train_bpe(chunk_counts: dict[bytes, int], n_merges: int) -> dict[bytes, int]:
    """Byte-level BPE on a unique-chunk table. Returns mergeable ranks {token bytes: rank}.

    words[i] is chunk i as a list of token ids; pair_counts[(a, b)] is the weighted count of the
    adjacent pair over all chunks; where[(a, b)] is the set of chunks holding it. Each merge only
    revisits the chunks that hold the merged pair (incremental update); a lazy max-heap finds the
    best pair (stale entries are skipped when popped)."""
    vocab = [bytes([b]) for b in range(256)]  # id -> bytes
    ranks = {t: i for i, t in enumerate(vocab)}
    words = [list(c) for c in chunk_counts]
    freqs = list(chunk_counts.values())
    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for i, w in enumerate(words):
        f = freqs[i]
        for p in zip(w, w[1:]):
            pair_counts[p] += f
            where.setdefault(p, set()).add(i)
    heap = [(-n, p) for p, n in pair_counts.items()]
    heapq.heapify(heap)
    merges_done = 0
    while merges_done < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:  # stale entry
            continue
        if -neg <= 0:
            break
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        if new_bytes in ranks:  # same bytes reachable by an earlier merge: reuse its id, no new rank
            new_id = ranks[new_bytes]
        else:
            new_id = len(vocab)
            vocab.append(new_bytes)
            ranks[new_bytes] = new_id
            merges_done += 1
        changed: set[tuple[int, int]] = set()
        for i in where.pop(pair, ()):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):  # remove this chunk's old pairs
                pair_counts[p] -= f
                changed.add(p)
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(new_id)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):  # add its new pairs
                pair_counts[p] += f
                where.setdefault(p, set()).add(i)
                changed.add(p)
        pair_counts.pop(pair, None)
        for p in changed:
            n = pair_counts.get(p, 0)
            if n > 0:
                heapq.heappush(heap, (-n, p))
            else:
                pair_counts.pop(p, None)
    return ranks


# ----------------------------------------------------------------------------------------------
# Chat templates: a checkpoint's own Jinja template, rendered as transformers' apply_chat_template does

TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str):
    """Compile a chat template in jinja2's immutable sandbox (hub templates are untrusted code), with the
    settings and helpers chat templates are written against: trim_blocks and lstrip_blocks, {% break %} /
    {% continue %}, raise_exception(msg), strftime_now(fmt), a tojson that does not HTML-escape, and
    {% generation %} blocks (assistant-mask markers) rendered as plain text."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)  # the "generation" name token
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)  # the body, unchanged

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, GenerationBlock])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat_template(source: str, messages: list[dict], add_generation_prompt: bool = False, **variables) -> str:
    """Render a Jinja chat template. messages: [{"role": ..., "content": ...}, ...] (keys whose value is None
    are dropped, as transformers does); variables: the special-token strings (bos_token, eos_token, ...) and any
    switch the template reads. Raises jinja2.TemplateError where the template calls raise_exception."""
    if not messages:
        raise ValueError("a chat needs at least one message")
    if not all(isinstance(m, dict) for m in messages):
        raise TypeError(f"chat messages must be dicts with 'role' and 'content', got {messages!r}")
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return _compile_chat_template(source).render(messages=messages, tools=None, documents=None,
                                                 add_generation_prompt=add_generation_prompt, **variables)


def _token_content(v):
    """A tokenizer_config.json special-token entry: a string, or an AddedToken dict {"content": ...}."""
    return v.get("content") if isinstance(v, dict) else v


def read_chat_template(folder: str) -> str | None:
    """The chat template stored in a tokenizer folder, or None: chat_template.jinja (it takes priority, as in
    transformers), else the "chat_template" of tokenizer_config.json (a string, or a list of named templates:
    the "default" one) or of our tokenizer_meta.json."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    for name in ("tokenizer_config.json", "tokenizer_meta.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            t = config.get("chat_template") if isinstance(config, dict) else None
            if isinstance(t, list):
                t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
            if isinstance(t, str):
                return t
    return None


# ----------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """A tiktoken Encoding plus special-token ids and (optionally) a Python pre-split sequence."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str = PATTERN,
                 splits: list[str] | None = None, nfc: bool = False, name: str = "nano-r1",
                 bos: str | None = "<|bos|>", eos: str | None = "<|eos|>", pad: str | None = "<|pad|>",
                 chat_template: str | None = None, template_tokens: dict | None = None):
        self.ranks, self.special_tokens, self.pattern = ranks, dict(special_tokens), pattern
        self.splits, self.nfc, self.name = splits, nfc, name
        # splits: a sequence of isolating regexes applied one after another (DeepSeek-V3); then each
        # piece is BPE-encoded whole, so tiktoken gets a match-all pattern.
        self.enc = tiktoken.Encoding(name, pat_str=MATCH_ALL if splits else pattern,
                                     mergeable_ranks=ranks, special_tokens=self.special_tokens)
        self._split_res = [regex.compile(p) for p in splits] if splits else None
        self._special_re = (regex.compile("(" + "|".join(regex.escape(s) for s in
                            sorted(self.special_tokens, key=len, reverse=True)) + ")")
                            if self.special_tokens else None)
        self._piece_cache: dict[str, list[int]] = {}
        self.bos_token, self.eos_token, self.pad_token = bos, eos, pad
        self.vocab_size = max(itertools.chain(ranks.values(), self.special_tokens.values())) + 1
        self._known_ids: set[int] | None = None  # built on the first decode of an unknown id
        # chat_template: the checkpoint's Jinja source (None: chat_prompt's built-in format); template_tokens: the
        # named special-token strings the template sees (bos_token, eos_token, ... from tokenizer_config.json)
        self.chat_template = chat_template
        self.template_tokens = dict(template_tokens or {})

    # ids of the named specials; None when this vocabulary has no such token (e.g. Qwen has no bos)
    bos_id = property(lambda self: self.special_tokens.get(self.bos_token) if self.bos_token else None)
    eos_id = property(lambda self: self.special_tokens.get(self.eos_token) if self.eos_token else None)
    pad_id = property(lambda self: self.special_tokens.get(self.pad_token, self.eos_id) if self.pad_token
                      else self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Special-token strings in the text are recognised as special tokens."""
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self._split_res is None:
            return self.enc.encode(text, allowed_special="all")
        ids: list[int] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        for k, part in enumerate(parts):
            if k % 2 == 1:  # odd parts are the captured special tokens
                ids.append(self.special_tokens[part])
            elif part:
                for piece in self._pre_split(part):
                    ids.extend(self._bpe_piece(piece))
        return ids

    def _pre_split(self, text: str) -> list[str]:
        """Apply each isolating split regex in turn to every piece (matches and gaps both kept)."""
        pieces = [text]
        for rx in self._split_res:
            out = []
            for p in pieces:
                last = 0
                for m in rx.finditer(p):
                    if m.start() > last:
                        out.append(p[last:m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    last = m.end()
                if last < len(p):
                    out.append(p[last:])
            pieces = out
        return pieces

    def _bpe_piece(self, piece: str) -> list[int]:
        ids = self._piece_cache.get(piece)
        if ids is None:
            ids = self.enc.encode_ordinary(piece)
            if len(self._piece_cache) < 200_000:
                self._piece_cache[piece] = ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._split_res is None and not self.nfc:
            return self.enc.encode_batch(texts, allowed_special="all")
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        """Ids -> text. Invalid UTF-8 becomes U+FFFD. Ids this vocabulary lacks (an embedding larger than the
        tokenizer, e.g. Qwen2.5's 151,936 rows for ~151,665 ids, or a negative id) are skipped, as Hugging Face
        tokenizers skip them: a sampled id in the gap must not crash a long run."""
        ids = [int(i) for i in ids]
        try:
            return self.enc.decode(ids, errors="replace")
        except (KeyError, OverflowError):  # tiktoken: "Invalid token for decoding" / not a u32
            if self._known_ids is None:
                self._known_ids = set(self.ranks.values()) | set(self.special_tokens.values())
            return self.enc.decode([i for i in ids if i in self._known_ids], errors="replace")

    def token_id(self, s: str) -> int:
        """Id of a string that is a single token (special or ordinary), else KeyError."""
        if s in self.special_tokens:
            return self.special_tokens[s]
        b = s.encode("utf-8")
        if b in self.ranks:
            return self.ranks[b]
        raise KeyError(f"{s!r} is not a single token in this vocabulary")

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Messages [{"role": "system"|"user"|"assistant", "content": str}] -> prompt text.

        With the R1-distill tokens: <｜begin▁of▁sentence｜>{system}<｜User｜>{u}<｜Assistant｜>{a}<｜end▁of▁sentence｜>
        ... and the generation prompt "<｜Assistant｜><think>\\n" (R1-distill prefills the think tag).
        Past assistant turns keep only the text after </think>, as R1's template does.
        Without them (from-scratch vocabularies): "<|bos|>User: {u}\\nAssistant: {a}<|eos|>..."."""
        r1 = all(t in self.special_tokens for t in (R1_BOS, R1_USER, R1_ASSISTANT))
        out = [R1_BOS if r1 else (self.bos_token or "")]
        for m in messages:
            role, content = m.get("role"), m.get("content", "")
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"message role must be system/user/assistant, got {role!r}")
            if role == "assistant" and "</think>" in content:
                content = content.split("</think>")[-1].strip()
            if r1:
                out.append({"system": content, "user": R1_USER + content,
                            "assistant": R1_ASSISTANT + content + R1_EOS}[role])
            else:
                out.append({"system": content + "\n", "user": "User: " + content + "\n",
                            "assistant": "Assistant: " + content + (self.eos_token or "") + "\n"}[role])
        if add_generation_prompt:
            out.append(R1_ASSISTANT + "<think>\n" if r1 else "Assistant:")
        return "".join(out)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
        """Messages -> prompt text with the checkpoint's own Jinja chat template (the text transformers'
        apply_chat_template(..., tokenize=False) gives), or chat_prompt()'s built-in format when it has none.
        variables: extra template switches; they override the special-token strings."""
        if self.chat_template is None:
            return self.chat_prompt(messages, add_generation_prompt)
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    **{**self.template_tokens, **variables})

    # ------------------------------------------------------------------------------------------
    # training, save / load

    @staticmethod
    def train(texts: Iterable[str], vocab_size: int, pattern: str = PATTERN, verbose: bool = False) -> "Tokenizer":
        """Train a byte-level BPE with vocab_size ids in total (256 bytes + merges + 7 specials)."""
        n_merges = vocab_size - 256 - len(SPECIAL_TOKENS)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
        t0 = time.process_time()  # CPU seconds: wall time lies on a shared machine
        counts = _count_chunks(texts, pattern)
        t1 = time.process_time()
        ranks = train_bpe(counts, n_merges)
        if verbose:
            print(f"bpe: {len(counts)} unique chunks in {t1 - t0:.1f}s, {len(ranks) - 256} merges in "
                  f"{time.process_time() - t1:.1f}s (CPU)")
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        return Tokenizer(ranks, specials, pattern)

    def save(self, path_dir: str) -> None:
        """Writes tokenizer.tiktoken (base64 token + rank per line) and tokenizer_meta.json."""
        os.makedirs(path_dir, exist_ok=True)
        with open(os.path.join(path_dir, "tokenizer.tiktoken"), "w") as f:
            for tok, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
                f.write(base64.b64encode(tok).decode() + f" {rank}\n")
        meta = {"name": self.name, "pattern": self.pattern, "splits": self.splits, "nfc": self.nfc,
                "special_tokens": self.special_tokens, "bos": self.bos_token, "eos": self.eos_token,
                "pad": self.pad_token, "chat_template": self.chat_template, "template_tokens": self.template_tokens}
        with open(os.path.join(path_dir, "tokenizer_meta.json"), "w") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)

    @staticmethod
    def load(path_dir: str) -> "Tokenizer":
        ranks_path = os.path.join(path_dir, "tokenizer.tiktoken")
        meta_path = os.path.join(path_dir, "tokenizer_meta.json")
        for p in (ranks_path, meta_path):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p} not found (Tokenizer.save writes tokenizer.tiktoken + "
                                        "tokenizer_meta.json)")
        ranks = {}
        with open(ranks_path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        tok, rank = line.split()
                        ranks[base64.b64decode(tok)] = int(rank)
                    except ValueError as e:
                        raise ValueError(f"{ranks_path}:{lineno}: expected '<base64> <rank>', got {line!r}") from e
        with open(meta_path) as f:
            m = json.load(f)
        return Tokenizer(ranks, m["special_tokens"], m["pattern"], m.get("splits"), m.get("nfc", False),
                         m.get("name", "nano-r1"), m.get("bos"), m.get("eos"), m.get("pad"), m.get("chat_template"),
                         m.get("template_tokens"))

    @staticmethod
    def from_pretrained(path: str) -> "Tokenizer":
        """A Hugging Face tokenizer.json (or a directory holding it, plus optional tokenizer_config.json)."""
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "tokenizer.tiktoken")):
                return Tokenizer.load(path)
            path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (give a tokenizer.json or a directory holding one)")
        try:
            with open(path, encoding="utf-8") as f:
                tj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
            raise ValueError(f"{path}: no 'model' section; expected a Hugging Face tokenizer.json")
        config = {}
        cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                config = json.load(f)
        tok = _from_tokenizer_json(tj, config, path)
        tok.chat_template = read_chat_template(os.path.dirname(path))
        tok.template_tokens = {k: _token_content(config[k]) for k in TEMPLATE_TOKENS
                               if _token_content(config.get(k)) is not None}
        return tok


def _from_tokenizer_json(tj: dict, config: dict, path: str) -> Tokenizer:
    model = tj["model"]
    if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: unsupported model type {model.get('type')!r}; only byte-level BPE is supported")
    added = {t["content"]: t["id"] for t in tj.get("added_tokens") or []}
    added_ids = set(added.values())
    # vocabulary: byte-level alphabet strings -> bytes
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for s, i in model["vocab"].items():
        if i in added_ids:
            continue
        try:
            ranks[bytes(byte_of[c] for c in s)] = i
        except KeyError:
            raise ValueError(f"{path}: vocab entry {s!r} is not in the byte-level alphabet; "
                             "only byte-level BPE (GPT-2 style alphabet) is supported") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks and b not in _NEVER_IN_UTF8]
    if missing:
        raise ValueError(f"{path}: vocabulary lacks single-byte tokens for bytes {missing[:8]}...; "
                         "a byte-level BPE needs all 256 (ByteLevel initial alphabet)")
    for m in model.get("merges") or []:  # each merge must produce a vocabulary token
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a + b not in model["vocab"]:
            raise ValueError(f"{path}: merge {m!r} produces {a + b!r}, which is not in the vocabulary")
    # normalizer: none or NFC
    norm = tj.get("normalizer")
    norms = (norm.get("normalizers") if norm and norm.get("type") == "Sequence" else [norm] if norm else [])
    if any(n.get("type") != "NFC" for n in norms):
        raise ValueError(f"{path}: unsupported normalizer {norm}; supported: none or NFC")
    # pre-tokenizer: Split(Isolated)* then ByteLevel(use_regex=False), or ByteLevel(use_regex=True)
    pre = tj.get("pre_tokenizer")
    if not pre:
        raise ValueError(f"{path}: no pre_tokenizer; expected Split/ByteLevel (byte-level BPE)")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    splits = []
    for st in steps:
        if st.get("type") == "Split":
            if st.get("behavior") != "Isolated" or st.get("invert"):
                raise ValueError(f"{path}: unsupported Split {st}; only behavior Isolated, invert false")
            p = st["pattern"]
            splits.append(p["Regex"] if "Regex" in p else regex.escape(p["String"]))
        elif st.get("type") == "ByteLevel":
            if st.get("add_prefix_space"):
                raise ValueError(f"{path}: ByteLevel add_prefix_space=true is not supported")
            if st.get("use_regex", True):
                splits.append(GPT2_PATTERN)
        else:
            raise ValueError(f"{path}: unsupported pre-tokenizer {st.get('type')!r}; supported: Split, ByteLevel")
    if not splits:
        raise ValueError(f"{path}: pre-tokenizer has no split regex; refusing to BPE whole texts")

    def tok_name(key):
        return _token_content(config.get(key))

    def first_present(*names):
        return next((n for n in names if n and n in added), None)

    bos = first_present(tok_name("bos_token"), "<|bos|>", R1_BOS, "<|begin_of_text|>")
    eos = first_present(tok_name("eos_token"), "<|eos|>", R1_EOS, "<|end_of_text|>", "<|endoftext|>")
    pad = first_present(tok_name("pad_token"), "<|pad|>") or eos
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or "pretrained"
    if len(splits) == 1:  # one regex: tiktoken splits natively (Qwen2, Llama-3, GPT-2)
        return Tokenizer(ranks, added, splits[0], None, bool(norms), name, bos, eos, pad)
    return Tokenizer(ranks, added, splits[0], splits, bool(norms), name, bos, eos, pad)


# ----------------------------------------------------------------------------------------------
# Writing a Hugging Face tokenizer.json (so `transformers.AutoTokenizer` loads our vocabularies)


def hf_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges (left, right) derived from tiktoken ranks, in priority order.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank; a HF BPE merges
    the listed pair that comes first. So every split of a token into two vocabulary tokens becomes a merge,
    ordered by the rank of the token it makes (ties: shorter left piece first)."""
    merges = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            if tok[:i] in ranks and tok[i:] in ranks:
                merges.append((rank, i, tok[:i], tok[i:]))
    merges.sort()
    return [(a, b) for _, _, a, b in merges]


def save_hf(tok: "Tokenizer", path_dir: str, model_max_length: int = 0) -> None:
    """Write tokenizer.json + tokenizer_config.json for `tok` (ours or one read from a tokenizer.json).

    Byte-level BPE: the vocabulary in GPT-2's byte alphabet, merges from hf_merges, the pre-tokenizer as
    isolating Split regexes followed by ByteLevel (no regex of its own), ignore_merges (a piece that is itself a
    token stays whole, as in tiktoken), the special tokens as added tokens. AutoTokenizer then gives our ids."""
    os.makedirs(path_dir, exist_ok=True)
    alphabet = bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    split = lambda p: {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}
                         for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": {"type": "NFC"} if tok.nfc else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(p) for p in tok.splits or [tok.pattern]]
                          + [byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {show(b): i for b, i in sorted(tok.ranks.items(), key=lambda kv: kv[1])},
                  "merges": [[show(a), show(b)] for a, b in hf_merges(tok.ranks)]},
    }
    with open(os.path.join(path_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": False, "add_eos_token": False,
              "model_max_length": model_max_length or 1_000_000_000_000_000_019_884_624_838_656}
    config.update({f"{k}_token": v for k, v in (("bos", tok.bos_token), ("eos", tok.eos_token),
                                                 ("pad", tok.pad_token)) if v in tok.special_tokens})
    with open(os.path.join(path_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
