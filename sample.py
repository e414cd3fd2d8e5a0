"""Batched autoregressive sampling with the KV cache, and a CLI that continues one prompt.

What it is
    generate(): many prompts of ragged length, n samples each (the group size G), one token per step from the
    model's KV cache; temperature / top-k / top-p / greedy, stop tokens and stop strings; returns the sampled
    tokens and the log-prob of each one under the distribution it was actually drawn from. The GRPO trainer
    does not use these log-probs (grpo.py recomputes them with the policy it updates, tested equal at
    temperature 1); they are what an importance ratio against the sampler would need. Evaluation (pass@1,
    cons@k, pass@k with bootstrap intervals, the CLI's --eval) is evaluate.py.

Simplifications vs production samplers (vLLM, SGLang, nanochat's Engine)
    1. Static batching: all prompts start together; a finished row is dropped from the batch (the
       cache is compacted once >= 25% of the rows are done; in the static loop only at its host checks)
       but no new prompt takes its place.
    2. The cache is one contiguous tensor per layer of size prompt+max_new_tokens (no paged blocks,
       no prefix sharing across different prompts; the G samples of one prompt share its prefill by
       copying the prompt's cache rows, not by pointing at them).
    3. Left padding: ragged prompts are padded on the left, their RoPE positions shifted so every
       prompt starts at position 0, and padded slots are masked out of attention.
    4. Two loops, tested equal: the readable eager twin (one host sync per step) and the static loop
       (default on CUDA): a fixed-shape KV cache that attends over all its slots (masked), stop tokens
       and a stop-string filter tracked on the device, one host check every check_every steps, and the
       decode step optionally replayed from a CUDA graph (cuda_graph=True) or torch.compile'd
       (compile=True). No paged attention kernels, no speculative decoding.
    5. Stop strings are checked by decoding the tail of a row, and only for rows whose newest token
       could complete one (its text contains a stop string's last character, or an incomplete byte).
    6. MLA models decode through the absorbed attention path (model.cfg.mla_absorb is set for the decode
       loop and restored after): same numbers, no per-step expansion of the latent cache into per-head keys
       and values. Prefill runs on whichever path the model was given: the textbook one unless mla_absorb
       was already True.

Log-probs: the log-prob of each sampled token under the distribution actually sampled from, i.e.
log_softmax(filter(logits / temperature)) where filter = top-k then top-p (removed tokens get -inf).
For temperature 1 and no filtering this equals the model's own log_softmax(logits), which is what a
trainer recomputes with one forward pass (tested). For greedy (temperature 0) the sampling
distribution is a point mass, so we report the model's log_softmax (temperature 1) at the argmax.

Use
    python sample.py --ckpt DIR --prompt "What is 12*34?"               # R1-Zero template, streams tokens
    python sample.py --ckpt DIR --eval ...                              # = python evaluate.py --ckpt DIR ...
    python sample.py --help                                             # every flag, grouped
    from sample import generate
    gen = generate(model, [tok.encode(p) for p in prompts], n=8, temperature=1.0, seed=0)   # gen.tokens (B, T)

Shapes: P prompts, G samples per prompt (generate's n), B = P*G rows, M rows still being decoded (shrinks as
rows finish), T positions (of the prompts in prefill, of the generated tokens after), V vocab, C model dim.
"""
import argparse
import functools
import json
import os
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COMPILE_BACKEND = "inductor"  # backend used by generate(compile=True); tests swap in "eager"


@dataclass
class Generation:
    tokens: torch.Tensor     # (B, T) int64 generated tokens, right-padded with pad_id; stop token included
    mask: torch.Tensor       # (B, T) bool, True on generated tokens
    logprobs: torch.Tensor   # (B, T) float32 log-prob of each token under the sampling distribution, 0 on pads
    lengths: torch.Tensor    # (B,) int64 number of generated tokens
    truncated: torch.Tensor  # (B,) bool, hit max_new_tokens without a stop


# ----------------------------------------------------------------------------- sampling one step

def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the top-k and outside the top-p nucleus (top-k applied first).

    top_k: keep exactly the k largest (0 = off). top_p: keep the smallest set of most likely tokens
    whose total probability reaches top_p (the token that crosses the threshold is kept; 1.0 = off)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1)  # values/indices (B, k)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kth.indices, True)  # (B, V)
        logits = logits.masked_fill(~keep, float("-inf"))  # (B, V)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)  # (B, V)
        mass_before = probs.cumsum(-1) - probs  # (B, V) probability of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (B, V); the most likely token always has 0 before it
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # (B, V) back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))  # (B, V)
    return logits


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniform=None, generator=None, vocab_limit=None):
    """logits (B, V) float -> (tokens (B,) int64, logprobs (B,) float32 under the sampling distribution).

    Sampling is by inverse CDF from one uniform number per row, uniform (B,) in [0, 1) (drawn from
    generator if not given), so a row's draw does not depend on which other rows are in the batch.
    vocab_limit: ids >= vocab_limit are never proposed (an embedding table may be larger than the tokenizer)."""
    logits = logits.float()  # (B, V)
    if vocab_limit is not None and vocab_limit < logits.size(-1):  # -inf beyond the tokenizer's last id
        logits = F.pad(logits[:, :vocab_limit], (0, logits.size(-1) - vocab_limit), value=float("-inf"))  # (B, V)
    if temperature == 0:  # greedy; report the model's own log-prob of the argmax
        tokens = logits.argmax(-1)  # (B,)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]  # (B,)
        return tokens, logprobs
    logprobs_all = filter_logits(logits / temperature, top_k, top_p).log_softmax(-1)  # (B, V)
    if uniform is None:
        uniform = torch.rand(logits.size(0), device=logits.device, generator=generator)  # (B,)
    probs = logprobs_all.exp()  # (B, V)
    cdf = probs.cumsum(-1)  # (B, V); a removed token adds 0 so it is never picked
    target = uniform[:, None] * cdf[:, -1:]  # (B, 1)
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # (B,)
    last = logits.size(-1) - 1 - probs.flip(-1).gt(0).int().argmax(-1)  # (B,) last kept token
    tokens = torch.minimum(tokens, last)  # target can round up to cdf[-1]: take the last kept token
    return tokens, logprobs_all.gather(-1, tokens[:, None])[:, 0]  # (B,), (B,)


# ----------------------------------------------------------------------------- stop strings

_STOP_TABLES = weakref.WeakKeyDictionary()  # tokenizer -> {(stop strings, V): (V,) bool}


class _StopStrings:
    """Checks whether a row's generated text contains a stop string, decoding only when it could."""

    def __init__(self, stop_strings, tokenizer):
        self.strings = [s for s in stop_strings if s]
        self.tokenizer = tokenizer
        self.last_chars = {s[-1] for s in self.strings}
        # a stop string of L chars lies within the last 4*L+4 tokens even if some tokens are single bytes
        self.window = 4 * max((len(s) for s in self.strings), default=0) + 4
        self.cache = {}  # token id -> could this token complete a stop string?

    def could_end(self, token):
        if token not in self.cache:
            text = self.tokenizer.decode([token])
            self.cache[token] = "\ufffd" in text or any(c in text for c in self.last_chars)
        return self.cache[token]

    def table(self, vocab_size, device):
        """(V,) bool on device: could token id complete a stop string? (the device-side filter of the fast loop;
        built once per tokenizer, stop strings and V). Ids the tokenizer cannot decode are never a stop."""
        key = (tuple(self.strings), vocab_size)
        try:
            tables = _STOP_TABLES.setdefault(self.tokenizer, {})
        except TypeError:  # a tokenizer that cannot be weakly referenced: no caching
            tables = {}
        if key not in tables:
            limit = min(vocab_size, getattr(self.tokenizer, "vocab_size", vocab_size))
            tables[key] = torch.tensor([i < limit and self._safe_could_end(i) for i in range(vocab_size)])  # (V,)
        return tables[key].to(device)

    def _safe_could_end(self, token):
        try:
            return self.could_end(token)
        except Exception:  # e.g. an id in a gap of the tokenizer's vocabulary
            return False

    def hit(self, generated):
        """generated: list[int], the row's generated tokens so far (newest last)."""
        if not self.strings or not self.could_end(generated[-1]):
            return False
        tail = self.tokenizer.decode(generated[-self.window:])
        return any(s in tail for s in self.strings)


# ----------------------------------------------------------------------------- generate

def _model_device(model):
    return next(model.parameters()).device


def _check_args(prompts, max_new_tokens, temperature, top_p, top_k, n, stop_strings, tokenizer, check_every=16,
                vocab_limit=None):
    if not prompts or any(not isinstance(p, (list, tuple)) or len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if any(stop_strings) and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    if check_every < 1:
        raise ValueError(f"check_every (decode steps between host checks) must be >= 1, got {check_every}")
    if vocab_limit is not None and vocab_limit < 1:
        raise ValueError(f"vocab_limit must be >= 1 or None, got {vocab_limit}")


def _left_pad(prompts, pad_id, device):
    """Left-pad prompts; positions shifted so each prompt starts at 0; valid marks real tokens."""
    T = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in prompts], device=device)  # (P, T)
    lens = torch.tensor([len(p) for p in prompts], device=device)  # (P,)
    pos = torch.arange(T, device=device)[None, :] - (T - lens)[:, None]  # (P, T), negative on pads
    valid = pos >= 0  # (P, T)
    return tokens, pos.clamp(min=0), valid, lens


def generate(model, prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, n=1,
             stop_tokens=(), stop_strings=(), tokenizer=None, pad_id=0, seed=None, compile=False,
             callback=None, compact_frac=0.25, static=None, check_every=16, cuda_graph=False, vocab_limit=None):
    """Sample n completions for each prompt (lists of token ids). Rows are prompt-major: sample j of
    prompt i is row i*n + j. callback(rows, tokens) (optional) is called with the original row ids still
    decoding and their new tokens (two lists of ints; the CLI streams with it): after every step in the eager
    loop, for each step since the last host check in the static one.
    compact_frac: compact the cache when this fraction of the rows being decoded has finished.
    static: the fast loop (_sample_loop_static: static KV cache, stops tracked on the device, one host check every
    check_every steps) if True, the readable eager twin (_sample_loop: one host sync per step) if False; None: static
    on CUDA when the model's cache supports it (on CPU, where syncs cost nothing, the twin is ~10% faster: it
    attends over the filled slots only). Both give the same samples under the same seed (tested).
    cuda_graph: replay the static loop's decode step from a CUDA graph (CUDA only).
    vocab_limit: never propose ids >= vocab_limit (default: tokenizer.vocab_size when a tokenizer is given); the
    log-probs are then under that masked distribution (equal to the model's when those ids carry ~no mass)."""
    if vocab_limit is None and tokenizer is not None:
        vocab_limit = getattr(tokenizer, "vocab_size", None)
    _check_args(prompts, max_new_tokens, temperature, top_p, top_k, n, stop_strings, tokenizer, check_every,
                vocab_limit)
    device = _model_device(model)
    if cuda_graph and (device.type != "cuda" or static is False):
        raise ValueError(f"cuda_graph=True needs a CUDA model and the static loop (model on {device}, static={static})")
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    longest = max(len(p) for p in prompts)
    if max_len is not None and longest + max_new_tokens > max_len:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's max_seq_len ({max_len}); shorten the prompt or lower max_new_tokens")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = _StopStrings(stop_strings, tokenizer)
    stop_ids = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)  # (S,)
    step_fn = _compiled_decode_step(COMPILE_BACKEND) if compile else _decode_step
    if cuda_graph:
        step_fn = _CUDAGraphStep(step_fn)

    was_training = model.training
    cfg = getattr(model, "cfg", None)
    was_absorbed = getattr(cfg, "mla_absorb", None)
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: the outputs may be used next to autograd in the trainer
            cache, logits, next_pos = _prefill(model, prompts, n, max_new_tokens, pad_id, device)
            if static is None:
                static = hasattr(cache, "to_static") and device.type == "cuda"
            elif static and not hasattr(cache, "to_static"):
                raise ValueError("static=True needs a model whose make_cache() returns a model.KVCache")
            loop = _sample_loop_static if static else _sample_loop
            out = loop(model, cache, logits, next_pos, max_new_tokens, temperature, top_p, top_k, stops, stop_ids,
                       pad_id, generator, step_fn, callback, compact_frac, vocab_limit, check_every)
    finally:
        model.train(was_training)
        if was_absorbed is not None:
            cfg.mla_absorb = was_absorbed
    out_tokens, out_logprobs, lengths, stopped = out
    T = max(int(lengths.max()), 1)
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (B, T)
    return Generation(tokens=out_tokens[:, :T], mask=mask, logprobs=out_logprobs[:, :T],
                      lengths=lengths, truncated=~stopped & (lengths == max_new_tokens))


def _prefill(model, prompts, n, max_new_tokens, pad_id, device):
    """Prefill each distinct prompt once, then copy its cache rows to its n samples. Returns (cache, logits (B, V)
    for each row's first new token, next_pos (B,) the position of each row's next token); B = len(prompts) * n."""
    tokens, pos, valid, lens = _left_pad(prompts, pad_id, device)  # (P, T), (P, T), (P, T), (P,)
    P, T = tokens.shape
    cache = model.make_cache(P, T + max_new_tokens)
    hidden = model(tokens, cache=cache, pos=pos, valid=valid, return_hidden=True)[:, -1]  # (P, C)
    logits = model.lm_head(hidden).float()  # (P, V) only the last position: no (P, T, V) tensor
    if getattr(getattr(model, "cfg", None), "attn", None) == "mla":
        model.cfg.mla_absorb = True  # decode attends in latent space: no per-step expansion of the cache
    expand = torch.arange(P, device=device).repeat_interleave(n)  # (B,)
    cache.select(expand)
    return cache, logits[expand], lens[expand]  # cache of B rows, (B, V), (B,)


def _outputs(B, max_new_tokens, pad_id, device):
    """Empty outputs: tokens (B, T) pad_id, logprobs (B, T) 0, lengths (B,) 0, stopped (B,) False."""
    return (torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device),
            torch.zeros(B, max_new_tokens, device=device), torch.zeros(B, dtype=torch.long, device=device),
            torch.zeros(B, dtype=torch.bool, device=device))


def _sample_loop(model, cache, logits, next_pos, max_new_tokens, temperature, top_p, top_k, stops, stop_ids, pad_id,
                 generator, step_fn, callback, compact_frac, vocab_limit, check_every=None):
    """The readable decode loop (the eager twin): one host sync per step to test whether everyone is done, stop
    strings checked on the host every step. Returns (tokens (B, T), logprobs (B, T), lengths (B,), stopped (B,))."""
    B, device = logits.shape[0], logits.device
    out_tokens, out_logprobs, lengths, stopped = _outputs(B, max_new_tokens, pad_id, device)
    rows = torch.arange(B, device=device)  # (M,) original row id of each row still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (M,) finished rows not yet compacted away
    history = [[] for _ in range(B)] if stops.strings else None  # generated ids, for stop strings

    for t in range(max_new_tokens):
        uniform = None
        if temperature > 0:  # one draw for every original row each step, then keep ours
            uniform = torch.rand(B, device=device, generator=generator)[rows]  # (M,)
        tok, lp = sample_next(logits, temperature, top_k, top_p, uniform, vocab_limit=vocab_limit)  # (M,), (M,)
        # finished rows still in the batch take a pad (no boolean indexing: no host sync)
        out_tokens[rows, t] = torch.where(done, pad_id, tok)
        out_logprobs[rows, t] = torch.where(done, 0.0, lp)
        lengths[rows] += (~done).long()
        hit = torch.isin(tok, stop_ids) & ~done  # (M,)
        if history is not None or callback is not None:
            live = (~done).nonzero()[:, 0].tolist()  # positions in the batch of unfinished rows
            row_ids, toks = rows.tolist(), tok.tolist()
            if callback is not None:
                callback([row_ids[i] for i in live], [toks[i] for i in live])
            if history is not None:
                hit = hit.cpu()
                for i in live:
                    history[row_ids[i]].append(toks[i])
                    if not hit[i] and stops.hit(history[row_ids[i]]):
                        hit[i] = True
                hit = hit.to(device)
        stopped[rows] |= hit
        done |= hit
        n_done = int(done.sum())  # the one host sync per step
        if n_done == len(done) or t == max_new_tokens - 1:
            break
        if n_done >= compact_frac * len(done):  # drop finished rows from the batch
            keep = (~done).nonzero()[:, 0]  # (M',)
            cache.select(keep)
            rows, tok, next_pos, done = rows[keep], tok[keep], next_pos[keep], done[keep]
        logits = step_fn(model, cache, tok, next_pos)  # (M, V)
        next_pos = next_pos + 1
    return out_tokens, out_logprobs, lengths, stopped


def _sample_loop_static(model, cache, logits, next_pos, max_new_tokens, temperature, top_p, top_k, stops, stop_ids,
                        pad_id, generator, step_fn, callback, compact_frac, vocab_limit, check_every=16):
    """The fast decode loop: the same samples as _sample_loop, with no host sync between checks. The cache is static
    (fixed shapes: step_fn may be a CUDA graph); stop tokens end rows on the device; a (V,) table flags rows whose
    new token could complete a stop string. Every check_every steps (and at the end) one host check: flagged rows
    are searched for stop strings and cut back to where one completed (they ran on meanwhile, wasting a few steps),
    the callback sees the steps since the last check, and finished rows are compacted away (with a CUDA graph only
    once half are done: each compaction is a recapture). Returns what _sample_loop returns."""
    B, device = logits.shape[0], logits.device
    cache.to_static()
    out_tokens, out_logprobs, lengths, stopped = _outputs(B, max_new_tokens, pad_id, device)
    rows = torch.arange(B, device=device)  # (M,) original row id of each row still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (M,) finished rows not yet compacted away
    could_end = stops.table(logits.shape[-1], device) if stops.strings else None  # (V,) bool
    maybe = torch.zeros(B, dtype=torch.bool, device=device)  # (B,) might have completed a stop string
    frac = max(compact_frac, 0.5) if isinstance(step_fn, _CUDAGraphStep) else compact_frac
    first = 0  # first step since the last host check
    for t in range(max_new_tokens):
        uniform = None
        if temperature > 0:  # one draw for every original row each step, then keep ours
            uniform = torch.rand(B, device=device, generator=generator)[rows]  # (M,)
        tok, lp = sample_next(logits, temperature, top_k, top_p, uniform, vocab_limit=vocab_limit)  # (M,), (M,)
        live = ~done  # (M,)
        out_tokens[:, t].index_copy_(0, rows, torch.where(live, tok, pad_id))  # finished rows take a pad
        out_logprobs[:, t].index_copy_(0, rows, torch.where(live, lp, 0.0))
        lengths.index_add_(0, rows, live.long())
        hit = live & (tok[:, None] == stop_ids).any(-1)  # (M,)
        stopped[rows] |= hit
        if could_end is not None:
            maybe[rows] |= live & could_end[tok]
        done = done | hit
        if t + 1 - first < check_every and t < max_new_tokens - 1:
            logits = step_fn(model, cache, tok, next_pos)  # (M, V)
            next_pos = next_pos + 1
            continue
        # ---- host check
        if could_end is not None:
            cut = _cut_at_stop_strings(stops, maybe, out_tokens, lengths, first, t)  # (h,), (h,) or None
            if cut is not None:
                hit_rows, new_len = cut
                lengths[hit_rows], stopped[hit_rows] = new_len, True
                beyond = torch.arange(max_new_tokens, device=device)[None, :] >= new_len[:, None]  # (h, T)
                out_tokens[hit_rows] = out_tokens[hit_rows].masked_fill(beyond, pad_id)
                out_logprobs[hit_rows] = out_logprobs[hit_rows].masked_fill(beyond, 0.0)
                done |= torch.isin(rows, hit_rows)  # (M,)
        if callback is not None:
            _replay(callback, out_tokens, lengths, first, t)
        first = t + 1
        n_done = int(done.sum())
        if n_done == len(done) or t == max_new_tokens - 1:
            break
        if n_done >= frac * len(done):  # drop finished rows from the batch (a new cache: fresh buffers)
            keep = (~done).nonzero()[:, 0]  # (M',)
            cache.select(keep)
            rows, tok, next_pos, done = rows[keep], tok[keep], next_pos[keep], done[keep]
        logits = step_fn(model, cache, tok, next_pos)  # (M, V)
        next_pos = next_pos + 1
    return out_tokens, out_logprobs, lengths, stopped


def _cut_at_stop_strings(stops, maybe, out_tokens, lengths, first, last):
    """Host side of a check: for the rows flagged in maybe (B,) (then cleared), the first step in first..last at
    which a stop string completed, exactly as _sample_loop would have found it step by step.
    Returns (row ids (h,), new lengths (h,)) on the device, or None if no row stopped."""
    cand = maybe.nonzero()[:, 0]  # (c,)
    maybe.zero_()
    if cand.numel() == 0:
        return None
    hits, new_len = [], []
    for r, row, length in zip(cand.tolist(), out_tokens[cand, :last + 1].tolist(), lengths[cand].tolist()):
        for s in range(first, min(last + 1, length)):
            if stops.hit(row[:s + 1]):
                hits.append(r)
                new_len.append(s + 1)
                break
    if not hits:
        return None
    return torch.tensor(hits, device=maybe.device), torch.tensor(new_len, device=maybe.device)


def _replay(callback, out_tokens, lengths, first, last):
    """Call callback(rows, tokens) for each step first..last, as _sample_loop does after each step."""
    lens, cols = lengths.tolist(), out_tokens[:, first:last + 1].tolist()
    for s in range(first, last + 1):
        rows = [r for r, length in enumerate(lens) if length > s]
        callback(rows, [cols[r][s - first] for r in rows])


def _decode_step(model, cache, tok, pos):
    """One decode step: tok (M,) int64 at positions pos (M,) -> next-token logits (M, V)."""
    return model(tok[:, None], cache=cache, pos=pos[:, None])[:, -1]  # (M, V)


@functools.lru_cache(maxsize=None)
def _compiled_decode_step(backend):
    """torch.compile of the decode step, built once per backend. dynamic=True: the batch shrinks as rows
    finish (and, with the dynamic cache, the cache grows by one slot per step), so shapes are symbolic."""
    return torch.compile(_decode_step, dynamic=True, backend=backend)


class _CUDAGraphStep:
    """The decode step replayed from a CUDA graph: one launch per step instead of one per op (~900 at zero-small).
    Needs a static cache (fixed shapes and addresses). Captured on the first call for a cache's buffers, and again
    after a compaction gives the cache new ones. Under autocast the capture disables autocast's weight-cast cache
    (as torch requires), so the graph re-casts fp32 weights every step: sample with bf16 weights to avoid that."""

    def __init__(self, step_fn):
        self.step_fn, self.key, self.graph = step_fn, None, None

    def __call__(self, model, cache, tok, pos):
        key = (id(cache), cache.kv[0][0].data_ptr(), tok.shape[0])
        if key != self.key:
            self._capture(model, cache, tok, pos)
            self.key = key
        self.tok.copy_(tok)
        self.pos.copy_(pos)
        self.graph.replay()  # writes the K/V slot, advances cache.slot, fills self.out
        cache.length += 1
        return self.out  # (M, V) overwritten by the next replay

    def _capture(self, model, cache, tok, pos):
        self.graph = None
        self.tok, self.pos = tok.clone(), pos.clone()  # (M,) the graph's input buffers
        slot, length = cache.slot.clone(), cache.length
        amp = torch.is_autocast_enabled("cuda")
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=amp, cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:  # warm-up outside the capture (cuBLAS workspaces, lazy init)
            self.step_fn(model, cache, self.tok, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        cache.slot.copy_(slot)  # the warm-up wrote the same slot the first replay rewrites
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast:
            self.out = self.step_fn(model, cache, self.tok, self.pos)  # (M, V)
        cache.length = length


# ----------------------------------------------------------------------------- prompts and stops

TEMPLATES = ("r1-zero", "chat", "none")


def make_prompt(template, tokenizer, question, instruct=True):
    """The prompt text for a question. r1-zero: the paper's R1-Zero template (Table 1). chat: the checkpoint's
    own chat template, one user turn. none: no wrapping. instruct: add DeepSeek's math instruction ("Please
    reason step by step, and put your final answer within \\boxed{}.") to chat/none, as for evaluation."""
    import tasks
    if template == "r1-zero":
        return tasks.r1_zero_prompt(question)
    text = tasks.CHAT_TEMPLATE.format(question=question) if instruct else question
    if template == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    if template == "none":
        return text
    raise ValueError(f"unknown template {template!r}; valid: {list(TEMPLATES)}")


def stops_for(tokenizer, template="r1-zero", eos_ids=()):
    """(stop token ids, stop strings). Always the tokenizer's eos and eos_ids (e.g. generation_config.json's
    eos_token_id: Qwen2.5-Instruct and Llama-3-Instruct end turns on other tokens than their eos); the R1-Zero
    template also stops at "</answer>" (a special token in our vocabularies, a stop string elsewhere)."""
    stop_tokens = [t for t in [tokenizer.eos_id, *eos_ids] if t is not None]
    if template != "r1-zero":
        return sorted(set(stop_tokens)), []
    special = getattr(tokenizer, "special_tokens", {}) or {}
    if "</answer>" in special:
        stop_tokens.append(special["</answer>"])
    return sorted(set(stop_tokens)), ["</answer>"]



# ------------------------------------------------------------------ checkpoints + CLI (evaluate.py shares it)

def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """(model, tokenizer) from one of our checkpoints or a Hugging Face model dir (checkpoint.load; its
    nano_r1.json, {} for a foreign dir, is checkpoint.read_meta(path))."""
    import checkpoint
    model, tokenizer, _ = checkpoint.load(path, device=device, dtype=dtype)
    return model, tokenizer


def _stream(tokenizer):
    """(callback for generate() that prints row 0's text as it grows, flush() to print what is left).
    Text ending in an incomplete multi-byte character is held back until the character completes."""
    ids, printed = [], [0]

    def callback(rows, tokens):
        if rows and rows[0] == 0:
            ids.append(tokens[0])
            text = tokenizer.decode(ids)
            if not text.endswith("\ufffd"):
                print(text[printed[0]:], end="", flush=True)
                printed[0] = len(text)

    def flush():
        print(tokenizer.decode(ids)[printed[0]:], flush=True)
    return callback, flush


class UsageError(Exception):
    """A mistake on the command line: main() prints it as one line ("error: ...") and exits 2, before any work."""


class FlagParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors (one line), with a did-you-mean for an unknown flag."""

    def error(self, message):
        import difflib
        if message.startswith("unrecognized arguments"):
            bad = message.split(":", 1)[1].split()[0]
            near = difflib.get_close_matches(bad.split("=")[0], self.flags(), n=1)
            message = f"unknown flag {bad}" + (f"; did you mean {near[0]}?" if near else "")
        raise UsageError(message + " (see --help)")

    def flags(self):
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]


def build_parser():
    ap = FlagParser(prog="sample.py", description="Sample from a checkpoint: continue one prompt, streaming the "
                    "completion. Evaluation (--eval) is evaluate.py's CLI: python evaluate.py --help. Flags use "
                    "underscores like train.py; dashes are accepted too.",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="examples:\n  python sample.py --ckpt DIR --prompt \"What is 17 * 23?\"\n"
                           "  python sample.py --ckpt runs/zero-tiny/rl/step_000040 --eval   # = python evaluate.py "
                           "--ckpt ...\n")
    g = ap.add_argument_group("what to run")
    g.add_argument("--ckpt", metavar="DIR", help="a checkpoint dir of ours or a Hugging Face model dir (required)")
    g.add_argument("--prompt", metavar="TEXT", help="continue TEXT, wrapped in --template, streaming the completion")
    g.add_argument("--eval", action="store_true", help="evaluate instead: runs evaluate.py with the other flags "
                   "(python evaluate.py --help lists them)")
    g = sampling_flags(ap, temperature="1.0", top_p="1.0 = off", budget="generation budget (default: the "
                       "checkpoint's training value, else 256; capped at the model's context)")
    g.add_argument("--seed", type=int, metavar="S", help="sampling seed (default: 0)")
    device_flags(ap)
    return ap


def sampling_flags(ap, temperature: str, top_p: str, budget: str, first=None):
    """The "prompt" and "sampling" flag groups sample.py and evaluate.py share (their defaults differ: sampling
    vs the paper's evaluation protocol); `first` adds flags at the top of the sampling group. Returns the group."""
    g = ap.add_argument_group("prompt")
    g.add_argument("--template", default="r1-zero", choices=TEMPLATES, help="r1-zero: the paper's R1-Zero "
                   "template; chat: the checkpoint's own chat template (tokenizer_config.json); none: no wrapping "
                   "(default: r1-zero)")
    g = ap.add_argument_group("sampling")
    if first:
        first(g)
    g.add_argument("--temperature", type=float, metavar="TEMP", help=f"0 = greedy (default: {temperature})")
    g.add_argument("--top_p", type=float, metavar="P", help=f"nucleus mass (default: {top_p})")
    g.add_argument("--top_k", type=int, default=0, metavar="K", help="keep the K most likely tokens (default: 0 = off)")
    g.add_argument("--max_new_tokens", type=int, metavar="N", help=budget)
    return g


def device_flags(ap) -> None:
    g = ap.add_argument_group("device")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="auto | cpu | cuda | cuda:N (default: auto = cuda if present)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: auto = bfloat16 on a GPU that supports it, else float32)")


def underscored(argv, flags):
    """--max-new-tokens -> --max_new_tokens for known flags (values are left alone)."""
    out = []
    for a in argv:
        name, eq, value = a.partition("=")
        fixed = "--" + name[2:].replace("-", "_") if a.startswith("--") else name
        out.append(fixed + eq + value if fixed in flags else a)
    return out


def parse_args(argv=None):
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    return ap.parse_args(underscored(argv, set(ap.flags())))
def check_ckpt(path):
    """A one-line error unless path is a checkpoint dir; for a run dir, names the checkpoints inside it."""
    if path is None:
        raise UsageError("--ckpt DIR is required (a checkpoint dir of ours or a Hugging Face model dir)")
    if not os.path.isdir(path):
        raise UsageError(f"--ckpt {path}: no such directory")
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    found, depth0 = [], path.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(path):
        if "config.json" in files:
            found.append(root)
        if root.count(os.sep) - depth0 >= 3:
            dirs.clear()
        dirs.sort()
    hint = (f"; checkpoints under it (latest last): {', '.join(sorted(found)[-3:])}" if found else
            "; valid: a checkpoint dir (config.json + weights) or a Hugging Face model dir")
    raise UsageError(f"--ckpt {path} is not a checkpoint directory (no config.json){hint}")


def read_record(ckpt):
    """nano_r1.json of a checkpoint: {"task", "preset", "step", "train": TrainConfig as a dict}, or {}."""
    path = os.path.join(ckpt, "nano_r1.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            rec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("train") or {}, dict):
        raise UsageError(f"{path}: expected an object with keys task, preset, step, train")
    return rec


def has_chat_template(ckpt):
    """Whether a checkpoint dir carries a chat template (its own files or our tokenizer/), without loading it."""
    from tokenizer import read_chat_template
    try:
        return any(read_chat_template(d) for d in (ckpt, os.path.join(ckpt, "tokenizer")))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--ckpt {ckpt}: unreadable tokenizer files ({e})") from None


def generation_eos_ids(ckpt):
    """eos_token_id of generation_config.json (an int or a list), the tokens a chat model ends its turn with."""
    try:
        with open(os.path.join(ckpt, "generation_config.json")) as f:
            eos = json.load(f).get("eos_token_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]



# valid range of each numeric flag (sample.py's and evaluate.py's), checked before anything loads
FLAG_RANGES = {"k": (lambda v: v >= 1, ">= 1"), "n": (lambda v: v >= 1, ">= 1"),
               "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"), "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
               "top_k": (lambda v: v >= 0, ">= 0 (0 = off)"), "max_new_tokens": (lambda v: v >= 1, ">= 1"),
               "batch_size": (lambda v: v >= 1, ">= 1"),
               "batch_tokens": (lambda v: v >= 0, ">= 0 (0 = from free memory)")}


def resolve_run(args):
    """The checks both CLIs share, none needing the model: --ckpt, the numeric flags, --device, --dtype, --template
    chat, and the checkpoint's nano_r1.json. Returns Namespace(device, dtype, record, train, problems, source,
    notes), or raises UsageError."""
    check_ckpt(args.ckpt)
    for name, (ok, valid) in FLAG_RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise UsageError(f"--{name} {value}: must be {valid}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"--device {device}: not available here; valid: auto, cpu"
                         + (", cuda, cuda:N" if torch.cuda.is_available() else " (no CUDA device)"))
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if args.template == "chat" and not has_chat_template(args.ckpt):
        raise UsageError(f"--template chat: {args.ckpt} has no chat template (tokenizer_config.json "
                         "'chat_template' or chat_template.jinja); valid here: r1-zero, none")
    record = read_record(args.ckpt)
    return argparse.Namespace(device=device, dtype=getattr(torch, dtype), record=record,
                              train=record.get("train") or {}, problems=None, source=None, notes=[])


def new_token_budget(args, train, model, prompts, default):
    """The generation budget: --max_new_tokens, else the recorded training value, else default (256 for a prompt,
    32768 for evaluation: the paper's), capped at the model's context; a given value that does not fit is an
    error."""
    longest = max(len(p) for p in prompts)
    context = getattr(getattr(model, "cfg", None), "max_seq_len", None) or 10 ** 9
    room = context - longest
    if room < 1:
        raise UsageError(f"the longest prompt has {longest} tokens; the model's context is {context}")
    if args.max_new_tokens is not None:
        if args.max_new_tokens > room:
            raise UsageError(f"--max_new_tokens {args.max_new_tokens}: the longest prompt ({longest} tokens) "
                             f"leaves {room} of the model's context ({context}); valid: 1..{room}")
        return args.max_new_tokens
    want = train.get("max_new_tokens") or default
    return min(int(want), room)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--eval" in argv and not any(a == "--prompt" or a.startswith("--prompt=") for a in argv):
        import evaluate  # --eval: evaluate.py's CLI, with these flags and this command in its resume line
        return evaluate.main(argv, prog="sample.py")
    try:
        _main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cli_model(ckpt: str, run):
    """The model and tokenizer of --ckpt on the run's device and dtype, and its generation eos ids; a UsageError
    naming the directory when it cannot be loaded (sample.py and evaluate.py)."""
    try:
        model, tok = load_checkpoint(ckpt, run.device, run.dtype)
    except (OSError, KeyError, ValueError) as e:
        raise UsageError(f"--ckpt {ckpt}: cannot load ({e})") from None
    return model, tok, generation_eos_ids(ckpt)


def cli_prompt(template: str, tok, question: str, **kw) -> str:
    """make_prompt, with a UsageError when the checkpoint's chat template fails (raise_exception, bad syntax)."""
    try:
        return make_prompt(template, tok, question, **kw)
    except Exception as e:
        raise UsageError(f"--template {template}: the checkpoint's chat template failed ({e})") from None


def _main(argv):
    args = parse_args(argv)
    if args.prompt is None or args.eval:
        raise UsageError("give exactly one of --prompt TEXT or --eval (evaluation: python evaluate.py --help)")
    run = resolve_run(args)
    model, tok, eos_ids = cli_model(args.ckpt, run)
    text = cli_prompt(args.template, tok, args.prompt, instruct=False)
    prompts = [tok.encode(text)]
    max_new_tokens = new_token_budget(args, run.train, model, prompts, default=256)
    print(text, end="", flush=True)
    stop_tokens, stop_strings = stops_for(tok, args.template, eos_ids)
    callback, flush = _stream(tok)
    try:
        generate(model, prompts, max_new_tokens=max_new_tokens,
                 temperature=1.0 if args.temperature is None else args.temperature,
                 top_p=1.0 if args.top_p is None else args.top_p, top_k=args.top_k, stop_tokens=stop_tokens,
                 stop_strings=stop_strings, tokenizer=tok, pad_id=tok.pad_id, seed=args.seed or 0, callback=callback)
    except KeyboardInterrupt:
        flush()
        print("(stopped)", file=sys.stderr)
        sys.exit(130)
    flush()


# The evaluation side moved to evaluate.py; these names still work from here (train.py: sample.evaluate).
_MOVED = ("evaluate", "summarize", "pass_at_k", "majority_vote", "bootstrap_ci", "per_problem_scores", "grade",
          "plan_calls", "memory_budget", "ResultsFile")


def __getattr__(name):
    if name in _MOVED:
        import evaluate
        return getattr(evaluate, name)
    raise AttributeError(f"module 'sample' has no attribute {name!r}")


if __name__ == "__main__":
    main()
