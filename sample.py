"""Batched autoregressive sampling with the KV cache, evaluation metrics, and a CLI.

What it is
    generate(): many prompts of ragged length, n samples each, one token per step from the model's
    KV cache; temperature / top-k / top-p / greedy, stop tokens and stop strings; returns the sampled
    tokens and the log-prob of each one under the distribution it was actually drawn from (what the
    RL trainer needs for its importance ratio). evaluate(): the paper's protocol (k samples at T=0.6,
    top-p 0.95): pass@1, cons@k (majority vote), unbiased pass@k, format compliance, response length and
    truncation, each with a 95% bootstrap interval over problems, per difficulty bucket; prompts in the
    R1-Zero template or the checkpoint's own chat template; batched by a KV-cache token budget; per-problem
    results to a JSONL file that a stopped run resumes from.

Simplifications vs production samplers (vLLM, SGLang, nanochat's Engine)
    1. Static batching: all prompts start together; a finished row is dropped from the batch (the
       cache is compacted once >= 25% of the rows are done; in the static loop only at its host checks)
       but no new prompt takes its place.
    2. The cache is one contiguous tensor per layer of size prompt+max_new_tokens (no paged blocks,
       no prefix sharing across different prompts; the n samples of one prompt share its prefill by
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
    6. MLA models prefill through the textbook attention path and decode through the absorbed one
       (model.cfg.mla_absorb is switched for the decode loop and restored): same numbers, no per-step
       expansion of the latent cache into per-head keys and values.

Log-probs: the log-prob of each sampled token under the distribution actually sampled from, i.e.
log_softmax(filter(logits / temperature)) where filter = top-k then top-p (removed tokens get -inf).
For temperature 1 and no filtering this equals the model's own log_softmax(logits), which is what a
trainer recomputes with one forward pass (tested). For greedy (temperature 0) the sampling
distribution is a point mass, so we report the model's log_softmax (temperature 1) at the argmax.

Evaluation vs the paper's: cons@k votes on answers' text (stripped), not on mathematical equivalence; the
intervals are percentile bootstraps over problems (a problem's k samples are kept together, not resampled).

Use
    python sample.py --ckpt DIR --prompt "What is 12*34?"               # R1-Zero template, streams tokens
    python sample.py --ckpt DIR --eval                                  # the task the checkpoint recorded
    python sample.py --ckpt DIR --eval --problems aime24.jsonl --template chat --k 64   # a real benchmark
    python sample.py --help                                             # every flag, grouped
    from sample import generate, evaluate
    gen = generate(model, [tok.encode(p) for p in prompts], n=8, temperature=1.0, seed=0)

Shapes: B prompts, n samples per prompt, N = B*n rows being decoded (shrinks as rows finish),
P longest prompt, T generated tokens, V vocab.
"""
import argparse
import functools
import json
import math
import os
import shlex
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COMPILE_BACKEND = "inductor"  # backend used by generate(compile=True); tests swap in "eager"


@dataclass
class Generation:
    tokens: torch.Tensor     # (B*n, T) int64 generated tokens, right-padded with pad_id; stop token included
    mask: torch.Tensor       # (B*n, T) bool, True on generated tokens
    logprobs: torch.Tensor   # (B*n, T) float32 log-prob of each token under the sampling distribution, 0 on pads
    lengths: torch.Tensor    # (B*n,) int64 number of generated tokens
    truncated: torch.Tensor  # (B*n,) bool, hit max_new_tokens without a stop


# ----------------------------------------------------------------------------- sampling one step

def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the top-k and outside the top-p nucleus (top-k applied first).

    top_k: keep exactly the k largest (0 = off). top_p: keep the smallest set of most likely tokens
    whose total probability reaches top_p (the token that crosses the threshold is kept; 1.0 = off)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1)  # values/indices (N, k)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kth.indices, True)  # (N, V)
        logits = logits.masked_fill(~keep, float("-inf"))  # (N, V)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(-1)  # (N, V)
        mass_before = probs.cumsum(-1) - probs  # (N, V) probability of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (N, V); the most likely token always has 0 before it
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # (N, V) back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))  # (N, V)
    return logits


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniform=None, generator=None, vocab_limit=None):
    """logits (N, V) float -> (tokens (N,) int64, logprobs (N,) float32 under the sampling distribution).

    Sampling is by inverse CDF from one uniform number per row, uniform (N,) in [0, 1) (drawn from
    generator if not given), so a row's draw does not depend on which other rows are in the batch.
    vocab_limit: ids >= vocab_limit are never proposed (an embedding table may be larger than the tokenizer)."""
    logits = logits.float()  # (N, V)
    if vocab_limit is not None and vocab_limit < logits.size(-1):  # -inf beyond the tokenizer's last id
        logits = F.pad(logits[:, :vocab_limit], (0, logits.size(-1) - vocab_limit), value=float("-inf"))  # (N, V)
    if temperature == 0:  # greedy; report the model's own log-prob of the argmax
        tokens = logits.argmax(-1)  # (N,)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]  # (N,)
        return tokens, logprobs
    logprobs_all = filter_logits(logits / temperature, top_k, top_p).log_softmax(-1)  # (N, V)
    if uniform is None:
        uniform = torch.rand(logits.size(0), device=logits.device, generator=generator)  # (N,)
    probs = logprobs_all.exp()  # (N, V)
    cdf = probs.cumsum(-1)  # (N, V); a removed token adds 0 so it is never picked
    target = uniform[:, None] * cdf[:, -1:]  # (N, 1)
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # (N,)
    last = logits.size(-1) - 1 - probs.flip(-1).gt(0).int().argmax(-1)  # (N,) last kept token
    tokens = torch.minimum(tokens, last)  # target can round up to cdf[-1]: take the last kept token
    return tokens, logprobs_all.gather(-1, tokens[:, None])[:, 0]  # (N,), (N,)


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
    P = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)  # (B, P)
    lens = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    pos = torch.arange(P, device=device)[None, :] - (P - lens)[:, None]  # (B, P), negative on pads
    valid = pos >= 0  # (B, P)
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
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (N, T)
    return Generation(tokens=out_tokens[:, :T], mask=mask, logprobs=out_logprobs[:, :T],
                      lengths=lengths, truncated=~stopped & (lengths == max_new_tokens))


def _prefill(model, prompts, n, max_new_tokens, pad_id, device):
    """Prefill each distinct prompt once, then copy its cache rows to its n samples. Returns (cache, logits (N, V)
    for each row's first new token, next_pos (N,) the position of each row's next token); N = len(prompts) * n."""
    tokens, pos, valid, lens = _left_pad(prompts, pad_id, device)  # (B, P), (B, P), (B, P), (B,)
    B, P = tokens.shape
    cache = model.make_cache(B, P + max_new_tokens)
    hidden = model(tokens, cache=cache, pos=pos, valid=valid, return_hidden=True)[:, -1]  # (B, C)
    logits = model.lm_head(hidden).float()  # (B, V) only the last position: no (B, P, V) tensor
    if getattr(getattr(model, "cfg", None), "attn", None) == "mla":
        model.cfg.mla_absorb = True  # decode attends in latent space: no per-step expansion of the cache
    expand = torch.arange(B, device=device).repeat_interleave(n)  # (N,)
    cache.select(expand)
    return cache, logits[expand], lens[expand]  # cache of N rows, (N, V), (N,)


def _outputs(N, max_new_tokens, pad_id, device):
    """Empty outputs: tokens (N, T) pad_id, logprobs (N, T) 0, lengths (N,) 0, stopped (N,) False."""
    return (torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device),
            torch.zeros(N, max_new_tokens, device=device), torch.zeros(N, dtype=torch.long, device=device),
            torch.zeros(N, dtype=torch.bool, device=device))


def _sample_loop(model, cache, logits, next_pos, max_new_tokens, temperature, top_p, top_k, stops, stop_ids, pad_id,
                 generator, step_fn, callback, compact_frac, vocab_limit, check_every=None):
    """The readable decode loop (the eager twin): one host sync per step to test whether everyone is done, stop
    strings checked on the host every step. Returns (tokens (N, T), logprobs (N, T), lengths (N,), stopped (N,))."""
    N, device = logits.shape[0], logits.device
    out_tokens, out_logprobs, lengths, stopped = _outputs(N, max_new_tokens, pad_id, device)
    rows = torch.arange(N, device=device)  # (M,) original row id of each row still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=device)  # (M,) finished rows not yet compacted away
    history = [[] for _ in range(N)] if stops.strings else None  # generated ids, for stop strings

    for t in range(max_new_tokens):
        uniform = None
        if temperature > 0:  # one draw for every original row each step, then keep ours
            uniform = torch.rand(N, device=device, generator=generator)[rows]  # (M,)
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
    N, device = logits.shape[0], logits.device
    cache.to_static()
    out_tokens, out_logprobs, lengths, stopped = _outputs(N, max_new_tokens, pad_id, device)
    rows = torch.arange(N, device=device)  # (M,) original row id of each row still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=device)  # (M,) finished rows not yet compacted away
    could_end = stops.table(logits.shape[-1], device) if stops.strings else None  # (V,) bool
    maybe = torch.zeros(N, dtype=torch.bool, device=device)  # (N,) might have completed a stop string
    frac = max(compact_frac, 0.5) if isinstance(step_fn, _CUDAGraphStep) else compact_frac
    first = 0  # first step since the last host check
    for t in range(max_new_tokens):
        uniform = None
        if temperature > 0:  # one draw for every original row each step, then keep ours
            uniform = torch.rand(N, device=device, generator=generator)[rows]  # (M,)
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
    """Host side of a check: for the rows flagged in maybe (N,) (then cleared), the first step in first..last at
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


# ----------------------------------------------------------------------------- evaluation metrics

def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), n samples of which c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers, correct):
    """Majority vote over extracted answers (None = no answer, never wins; ties -> first seen).
    Returns (voted answer or None, whether a sample with that answer was correct)."""
    keys = [a.strip() if isinstance(a, str) else None for a in answers]
    counts = Counter(a for a in keys if a is not None)
    if not counts:
        return None, False
    best = max(counts.values())
    winner = next(a for a in keys if a is not None and counts[a] == best)
    return winner, any(ok for a, ok in zip(keys, correct) if a == winner)


def bootstrap_ci(values, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval for the mean of per-problem values: resample the problems with
    replacement n_boot times (seeded), take the (1-level)/2 and (1+level)/2 quantiles of the means.
    values: (P,) one number per problem. Returns (low, high); (nan, nan) without problems."""
    import numpy as np
    x = np.asarray(values, dtype=np.float64)  # (P,)
    if x.size == 0 or n_boot < 1:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))  # (n_boot, P)
    low, high = np.quantile(x[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])  # over the n_boot means
    return float(low), float(high)


def _pass_ks(k):
    """The j of the pass@j columns: powers of two below k, then k itself."""
    return [j for j in (2 ** i for i in range(1, 20)) if j < k] + [k]


def per_problem_scores(group, k):
    """One problem's samples (dicts with correct, pred, format, length, truncated) -> its per-problem values:
    pass@1 (mean correctness), cons@k (majority vote correct), pass@j (unbiased, j in _pass_ks), format,
    length and truncated (means). Every overall metric is the mean of these over problems."""
    mean = lambda xs: sum(xs) / len(xs)
    c = sum(bool(s["correct"]) for s in group)
    out = {"pass@1": c / len(group),
           "cons@k": float(majority_vote([s["pred"] for s in group], [s["correct"] for s in group])[1])}
    for j in _pass_ks(k):
        out[f"pass@{j}"] = pass_at_k(len(group), c, min(j, len(group)))
    out["pass@k"] = out[f"pass@{k}"]
    out.update(format=mean([s["format"] for s in group]), length=mean([s["length"] for s in group]),
               truncated=mean([float(s["truncated"]) for s in group]))
    return out


def _metrics(per_problem, k, n_boot=0, seed=0):
    """per_problem: list of lists of sample dicts (k each) -> metric dict; with n_boot, "ci" holds each
    metric's 95% bootstrap interval over problems (the same resamples for every metric)."""
    if not per_problem:
        return {"n": 0}
    scores = [per_problem_scores(g, k) for g in per_problem]
    samples = [s for group in per_problem for s in group]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    out = {"n": len(per_problem)}
    out.update({m: mean([sc[m] for sc in scores]) for m in scores[0]})
    out["length_correct"] = mean([s["length"] for s in samples if s["correct"]])
    out["length_wrong"] = mean([s["length"] for s in samples if not s["correct"]])
    if n_boot:
        out["ci"] = {m: bootstrap_ci([sc[m] for sc in scores], n_boot, seed) for m in scores[0]}
    return out


def summarize(samples, k, n_boot=1000, seed=0):
    """samples: flat list of sample dicts in problem-major order (k per problem), each with keys
    bucket, correct, pred, format, length, truncated -> overall metrics (+ "ci", 95% bootstrap intervals
    over problems, seeded) + "by_bucket"."""
    groups = [samples[i:i + k] for i in range(0, len(samples), k)]
    result = _metrics(groups, k, n_boot, seed)
    buckets = sorted({g[0]["bucket"] for g in groups})
    result["by_bucket"] = {b: _metrics([g for g in groups if g[0]["bucket"] == b], k) for b in buckets}
    return result


# ----------------------------------------------------------------------------- prompts, stops, grading

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


def grade(completion, problem, template="r1-zero", thinks=False):
    """(predicted answer or None, correct, format) of one completion.
    r1-zero: the training reward's rule (rewards.score): the answer is the <answer> block of a completion of the
    exact format; format 1.0 for that format. chat / none: the answer is the last \\boxed{} (or <answer> block,
    or GSM8K's #### N) after the reasoning (text after the last </think> when the model thinks: thinks, or a
    <think> in the completion); format 1.0 when such an answer exists. Correctness: rewards.check_answer
    (rewards.math_equal for math/gsm8k problems, the task's checker for synthetic ones)."""
    import rewards
    if template == "r1-zero":
        s = rewards.score(completion, problem)
        return s["answer"], s["accuracy"] > 0, float(s["format"])
    final = completion
    if thinks or "<think>" in completion:
        if "</think>" not in completion:
            return None, False, 0.0  # still thinking: no final answer yet
        final = completion.rsplit("</think>", 1)[1]
    pred = rewards.extract_answer(final)
    correct = pred is not None and bool(rewards.check_answer(pred, problem))
    return pred, correct, float(pred is not None)


# ----------------------------------------------------------------------------- evaluation

def plan_calls(prompt_lens, k, max_new_tokens, max_rows, max_tokens=0):
    """Split an evaluation into generate() calls: a list of (problem indices, samples per problem), in problem
    order. A call holds at most max_rows sequences and, if max_tokens > 0, at most max_tokens KV-cache slots,
    counted as the cache allocates them: rows x (longest prompt in the call + max_new_tokens). A problem whose k
    samples alone exceed a limit has its samples split over several calls."""
    def fits(rows, longest):
        return rows <= max_rows and (not max_tokens or rows * (longest + max_new_tokens) <= max_tokens)

    calls, group, longest = [], [], 0
    for i, L in enumerate(prompt_lens):
        if group and fits((len(group) + 1) * k, max(longest, L)):
            group.append(i)
            longest = max(longest, L)
            continue
        if group:
            calls.append((group, k))
        group, longest = [i], L
        if not fits(k, L):  # alone too big: its samples in calls of m rows
            m = max(1, min(max_rows, max_tokens // (L + max_new_tokens) if max_tokens else max_rows))
            calls += [([i], min(m, k - s)) for s in range(0, k, m)]
            group = []
    if group:
        calls.append((group, k))
    return calls


def memory_budget(model, device, frac=0.5):
    """(max KV-cache tokens, max rows) that fit in frac of the free memory of device (CUDA: free GPU memory;
    CPU: available RAM). A token costs its KV cache in every layer; a row also holds ~8 float32 vocab-sized
    vectors while sampling (logits, filtered, softmax, cumsum, ...). (0, 0) = unknown, no limit."""
    from model import cache_bytes_per_token
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return 0, 0
    dtype_bytes = next(model.parameters()).element_size()
    per_token = cache_bytes_per_token(cfg, dtype_bytes) * cfg.n_layers
    if torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(free * frac / per_token), max(1, int(free * frac / 2 / (cfg.vocab_size * 4 * 8)))


class ResultsFile:
    """Per-problem results as JSONL: a header line {"settings": ...}, then one record per finished problem,
    appended and flushed as problems finish, so a stopped evaluation resumes where it stopped. A partial last
    line (a kill mid-write) is cut off on reopening; a header with other settings is an error."""

    def __init__(self, path, settings):
        self.path, self.settings, self.records = path, settings, {}
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self._read()
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"settings": settings}) + "\n")

    def _read(self):
        with open(self.path, "rb") as f:
            data = f.read()
        good = data[:data.rfind(b"\n") + 1]  # complete lines only
        lines = good.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0])["settings"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if header is None:
            raise ValueError(f"{self.path}: not a results file of sample.py (no settings header); give another --out")
        if header != self.settings:
            diff = ", ".join(f"{k}={header.get(k)!r} there, {v!r} here" for k, v in self.settings.items()
                             if header.get(k) != v)
            raise ValueError(f"{self.path} holds results with other settings ({diff}); resume with the same "
                             f"settings or give another --out")
        for lineno, line in enumerate(lines[1:], 2):
            try:
                r = json.loads(line)
                self.records[int(r["index"])] = r
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ValueError(f"{self.path}:{lineno}: not a result record; give another --out") from None
        if len(good) < len(data):  # drop the partial line so appends start on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(len(good))

    def check(self, problems):
        """The records (index -> record), which must be of these problems (more is fine: an earlier, larger --n)."""
        for i, r in self.records.items():
            if i < len(problems) and r.get("problem") != problems[i].question:
                raise ValueError(f"{self.path} holds problem {i} {r.get('problem', '')[:40]!r}, which is not "
                                 f"problem {i} of this problem set; give another --out")
        return self.records

    def add(self, records):
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.records[r["index"]] = r
            f.flush()
            os.fsync(f.fileno())


def evaluate(model, tokenizer, problems, k=8, temperature=0.6, top_p=0.95, max_new_tokens=256,
             batch_size=64, prompt_fn=None, seed=0, progress=False, template="r1-zero", token_budget=0,
             stop_ids=(), results=None, n_boot=1000, top_k=0):
    """k samples per problem at the paper's T=0.6 / top-p 0.95 (top_k 0 = off); graded by grade(template).
    batch_size: most sequences per generate() call; token_budget: most KV-cache slots per call (0 = no limit),
    see plan_calls. prompt_fn(question) -> text overrides make_prompt(template). stop_ids: extra stop tokens.
    results: a ResultsFile; problems it already holds are skipped (resume) and new ones appended as they finish.
    Seeds: call c of the plan samples with seed + c, so a resumed run draws what an uninterrupted one would.
    Returns {"pass@1", "cons@k", "pass@k", "pass@j"..., "format", "length", "truncated", "ci", "n", "k",
    "by_bucket", "samples", "records"}."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not problems:
        raise ValueError("problems is empty")
    prompt_fn = prompt_fn or (lambda q: make_prompt(template, tokenizer, q))
    texts = [prompt_fn(p.question) for p in problems]
    prompts = [tokenizer.encode(t) for t in texts]
    stop_tokens, stop_strings = stops_for(tokenizer, template, stop_ids)
    end_ids = set(stop_tokens) - {(getattr(tokenizer, "special_tokens", {}) or {}).get("</answer>")}
    calls = plan_calls([len(p) for p in prompts], k, max_new_tokens, batch_size, token_budget)
    records = {} if results is None else dict(results.check(problems))
    tokens, t0, last = [0], time.perf_counter(), [0.0]

    def show_speed(rows, toks):  # generate() callback: live tokens/s while a long call runs, at most 1 redraw/s
        tokens[0] += len(toks)
        if time.perf_counter() - last[0] > 1.0:
            last[0] = time.perf_counter()
            bar.set_postfix_str(f"{tokens[0] / (last[0] - t0):.0f} tok/s", refresh=True)
    bar, callback = None, None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(problems), initial=sum(i < len(problems) for i in records), unit="problem",
                   desc="eval", dynamic_ncols=True)
        callback = show_speed
    pending = {}  # problem index -> sample dicts so far (a problem split over several calls)
    try:
        for c, (idx, n) in enumerate(calls):
            idx = [i for i in idx if i not in records]
            if not idx:
                continue
            gen = generate(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, n=n, stop_tokens=stop_tokens, stop_strings=stop_strings,
                           tokenizer=tokenizer, pad_id=tokenizer.pad_id, seed=seed + c, callback=callback)
            finished = []
            for r in range(len(idx) * n):
                i = idx[r // n]
                ids = gen.tokens[r, :gen.lengths[r]].tolist()
                completion = tokenizer.decode(ids[:-1] if ids and ids[-1] in end_ids else ids)
                thinks = texts[i].rstrip().endswith("<think>")
                pred, ok, fmt = grade(completion, problems[i], template, thinks)
                pending.setdefault(i, []).append((completion, pred, ok, fmt, int(gen.lengths[r]),
                                                  bool(gen.truncated[r])))
                if len(pending[i]) == k:
                    s = pending.pop(i)
                    p = problems[i]
                    finished.append({"index": i, "problem": p.question, "answer": p.answer, "bucket": p.bucket,
                                     "task": p.task, "samples": [x[0] for x in s], "preds": [x[1] for x in s],
                                     "verdicts": [x[2] for x in s], "formats": [x[3] for x in s],
                                     "lengths": [x[4] for x in s], "truncated": [x[5] for x in s]})
            if results is not None:
                results.add(finished)
            records.update((r["index"], r) for r in finished)
            if bar is not None:
                bar.update(len(finished))
                bar.set_postfix_str(f"{tokens[0] / (time.perf_counter() - t0):.0f} tok/s", refresh=True)
    finally:
        if bar is not None:
            bar.close()
    done = [records[i] for i in range(len(problems))]
    samples = [{"question": r["problem"], "gold": r["answer"], "bucket": r["bucket"], "completion": c, "pred": p,
                "correct": ok, "format": fm, "length": n, "truncated": tr} for r in done
               for c, p, ok, fm, n, tr in zip(r["samples"], r["preds"], r["verdicts"], r["formats"], r["lengths"],
                                              r["truncated"])]
    result = summarize(samples, k, n_boot, seed)
    result.update(k=k, samples=samples, records=done)
    return result


# ----------------------------------------------------------------------------- checkpoints + CLI

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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        import difflib
        if message.startswith("unrecognized arguments"):
            bad = message.split(":", 1)[1].split()[0]
            near = difflib.get_close_matches(bad.split("=")[0], self._flags(), n=1)
            message = f"unknown flag {bad}" + (f"; did you mean {near[0]}?" if near else "")
        raise UsageError(message + " (see --help)")

    def _flags(self):
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]


def build_parser():
    import tasks
    ap = _Parser(prog="sample.py", description="Sample from a checkpoint (--prompt) or evaluate it (--eval) with the "
                 "paper's protocol. Flags use underscores like train.py; dashes are accepted too.",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="examples:\n  python sample.py --ckpt runs/zero-tiny/rl/step_000040 --eval\n"
                        "  python sample.py --ckpt DIR --eval --problems aime24.jsonl --template chat --k 64\n"
                        "  python sample.py --ckpt DIR --prompt \"What is 17 * 23?\"\n")
    g = ap.add_argument_group("what to run")
    g.add_argument("--ckpt", metavar="DIR", help="a checkpoint dir of ours or a Hugging Face model dir (required)")
    g.add_argument("--prompt", metavar="TEXT", help="continue TEXT, wrapped in --template, streaming the completion")
    g.add_argument("--eval", action="store_true", help="evaluate: pass@1, cons@k, pass@k, format, length, "
                   "truncation, each with a 95%% bootstrap interval over problems")
    g = ap.add_argument_group("problems (--eval)")
    g.add_argument("--problems", metavar="FILE", help="a JSONL problem file: GSM8K (question, answer '#### N'), "
                   "MATH (problem, solution with \\boxed{}) or AIME-style (problem, answer)")
    g.add_argument("--format", default="auto", choices=tasks.PROBLEM_FORMATS,
                   help="format of --problems (default: auto, from the first record's fields)")
    g.add_argument("--task", choices=sorted(tasks.BUCKETS), help="a synthetic task instead of --problems "
                   "(default: the task the checkpoint recorded in nano_r1.json)")
    g.add_argument("--buckets", metavar="B,B", help="difficulty buckets of --task (default: recorded, else all)")
    g.add_argument("--n", type=int, metavar="N", help="number of problems (default: all of --problems; for the "
                   "recorded task, its training log's held-out set; 100 of another --task)")
    g = ap.add_argument_group("prompt")
    g.add_argument("--template", default="r1-zero", choices=TEMPLATES, help="r1-zero: the paper's R1-Zero "
                   "template; chat: the checkpoint's own chat template (tokenizer_config.json); none: no wrapping "
                   "(default: r1-zero)")
    g = ap.add_argument_group("sampling")
    g.add_argument("--k", type=int, help="samples per problem (default: the training log's eval_k for the recorded "
                   "task or file, else 8; the paper: 64 on AIME)")
    g.add_argument("--temperature", type=float, metavar="TEMP",
                   help="0 = greedy (default: 0.6 for --eval, the paper's; 1.0 for --prompt)")
    g.add_argument("--top_p", type=float, metavar="P",
                   help="nucleus mass (default: 0.95 for --eval, the paper's; 1.0 for --prompt)")
    g.add_argument("--top_k", type=int, default=0, metavar="K", help="keep the K most likely tokens (default: 0 = off)")
    g.add_argument("--max_new_tokens", type=int, metavar="N", help="generation budget per sample (default: the "
                   "checkpoint's training value, else 32768 for --eval (the paper's) and 256 for --prompt; capped "
                   "at the model's context)")
    g.add_argument("--seed", type=int, metavar="S", help="sampling seed, and the seed that draws --task problems "
                   "(default: the training run's seed for the recorded task or file, else 0)")
    g = ap.add_argument_group("batching and output (--eval)")
    g.add_argument("--batch_size", type=int, metavar="ROWS", help="most sequences per generate() call (default: "
                   "the training log's eval_batch for the recorded task or file, else 64)")
    g.add_argument("--batch_tokens", type=int, default=0, metavar="SLOTS", help="most KV-cache slots (sequences x "
                   "(prompt + max_new_tokens)) per call (default: 0 = what fits in half the free device memory)")
    g.add_argument("--out", metavar="FILE", help="per-problem results JSONL, resumed when it exists; the summary "
                   "goes beside it as .summary.json (default: runs/eval/<ckpt>-<problems>-<template>-k<k>-<settings "
                   "hash>.jsonl)")
    g = ap.add_argument_group("device")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="auto | cpu | cuda | cuda:N (default: auto = cuda if present)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: auto = bfloat16 on a GPU that supports it, else float32)")
    return ap


def _underscored(argv, flags):
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
    return ap.parse_args(_underscored(argv, set(ap._flags())))


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


def resolve(args):
    """Every check of the command line that needs no model: returns what to run, or raises UsageError."""
    import tasks
    if (args.prompt is None) == (not args.eval):
        raise UsageError("give exactly one of --prompt TEXT or --eval")
    check_ckpt(args.ckpt)
    for name, ok, valid in [("k", args.k is None or args.k >= 1, ">= 1"), ("n", args.n is None or args.n >= 1, ">= 1"),
                            ("temperature", args.temperature is None or args.temperature >= 0, ">= 0 (0 = greedy)"),
                            ("top_p", args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]"),
                            ("top_k", args.top_k >= 0, ">= 0 (0 = off)"),
                            ("max_new_tokens", args.max_new_tokens is None or args.max_new_tokens >= 1, ">= 1"),
                            ("batch_size", args.batch_size is None or args.batch_size >= 1, ">= 1"),
                            ("batch_tokens", args.batch_tokens >= 0, ">= 0 (0 = from free memory)")]:
        if not ok:
            raise UsageError(f"--{name} {getattr(args, name)}: must be {valid}")
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
    train = record.get("train") or {}
    run = argparse.Namespace(device=device, dtype=getattr(torch, dtype), record=record, train=train,
                             problems=None, source=None, notes=[])
    if args.prompt is not None:
        args.seed = args.seed or 0
        return run
    if args.problems and args.task:
        raise UsageError(f"give --problems FILE or --task, not both (got {args.problems} and {args.task})")
    if args.problems or (train.get("problems") and not args.task):  # a problem file: given, or the one trained on
        path, fmt, limit = args.problems, args.format, args.n
        if not path:
            path = train.get("eval_path") or train["problems"]
            fmt, limit = train.get("problems_kind", "auto"), args.n or (None if train.get("eval_path")
                                                                      else train.get("eval_problems"))
            run.notes.append(f"problems: {path} ({'held-out ' if not train.get('eval_path') else ''}"
                             f"file recorded in {args.ckpt}/nano_r1.json)")
        try:
            problems = tasks.load_jsonl(path, kind=fmt)
        except FileNotFoundError:
            raise UsageError(f"--problems {path}: no such file" + ("" if args.problems else
                             " (recorded in nano_r1.json); give --problems FILE")) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--problems {path}: cannot read ({e})") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        run.problems = problems[:limit] if limit else problems
        run.source = {"problems": os.path.abspath(path), "format": fmt}
        return _eval_defaults(args, train, not args.problems, run)
    task = args.task or record.get("task")
    if task is None:
        raise UsageError(f"--eval needs --problems FILE or --task (valid: {sorted(tasks.BUCKETS)}); {args.ckpt} "
                         "records no task (no nano_r1.json)")
    if task not in tasks.BUCKETS:
        raise UsageError(f"task {task!r} recorded in {args.ckpt}/nano_r1.json is not a synthetic task; give "
                         f"--problems FILE or --task (valid: {sorted(tasks.BUCKETS)})")
    if args.task and record.get("task") and args.task != record["task"]:
        run.notes.append(f"--task {args.task} overrides the task the checkpoint was trained on ({record['task']})")
    elif not args.task:
        run.notes.append(f"task: {task} (recorded in {args.ckpt}/nano_r1.json)")
    buckets = args.buckets or (train.get("buckets") if task == record.get("task") else None) \
        or ",".join(tasks.BUCKETS[task])
    buckets = buckets.split(",") if isinstance(buckets, str) else list(buckets)
    bad = [b for b in buckets if b not in tasks.BUCKETS[task]]
    if bad:
        raise UsageError(f"--buckets {','.join(buckets)}: {bad[0]!r} is not a bucket of {task}; "
                         f"valid: {','.join(tasks.BUCKETS[task])}")
    # the task it was trained on: by default the held-out problems of its training log (same count and seed)
    trained = task == record.get("task")
    n = args.n or (int(train.get("eval_problems", 25)) * len(buckets) if trained else 100)
    problem_seed = args.seed if args.seed is not None else int(train.get("seed", 0)) if trained else 0
    run.problems = tasks.make_problems(task, n, split="test", seed=problem_seed, buckets=buckets)
    run.source = {"task": task, "buckets": ",".join(buckets), "problem_seed": problem_seed}
    return _eval_defaults(args, train, trained, run)


def _eval_defaults(args, train, trained, run):
    """k, batch_size and seed not given: those of the training log's held-out evaluation when evaluating what the
    checkpoint was trained on (then its logged numbers are reproduced exactly), else 8, 64 and 0."""
    args.k = args.k or (int(train.get("eval_k", 8)) if trained else 8)
    args.batch_size = args.batch_size or (int(train.get("eval_batch", 64)) if trained else 64)
    args.seed = args.seed if args.seed is not None else int(train.get("seed", 0)) if trained else 0
    return run


def _max_new_tokens(args, run, model, prompts):
    """The generation budget: --max_new_tokens, else the recorded training value, else 32768 (--eval, the paper's)
    or 256 (--prompt), capped at the model's context; a given value that does not fit is an error."""
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
    want = run.train.get("max_new_tokens") or (32768 if args.eval else 256)
    return min(int(want), room)


def _report(res, k, header):
    """The evaluation table: each metric with its 95% bootstrap interval over problems; then per bucket."""
    names = ["pass@1", "cons@k"] + [f"pass@{j}" for j in _pass_ks(k)] + ["format", "length", "truncated"]
    lines = [header, f"{'metric':<10} {'value':>9}   95% CI (bootstrap over {res['n']} problems)"]
    for m in dict.fromkeys(names):
        lo, hi = res["ci"][m]
        label = f"cons@{k}" if m == "cons@k" else m
        fmt = ".1f" if m == "length" else ".3f"
        lines.append(f"{label:<10} {res[m]:>9{fmt}}   [{lo:{fmt}}, {hi:{fmt}}]")
    if len(res["by_bucket"]) > 1:
        lines += [f"  bucket {b:<4} pass@1 {r['pass@1']:.3f}  cons@{k} {r['cons@k']:.3f}  length {r['length']:.1f}  "
                  f"(n={r['n']})" for b, r in res["by_bucket"].items()]
    return "\n".join(lines)


def _default_out(args, settings):
    import hashlib
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    ckpt = "-".join(os.path.abspath(args.ckpt).split(os.sep)[-3:])
    src = settings.get("task") or os.path.splitext(os.path.basename(settings["problems"]))[0]
    return os.path.join("runs", "eval", f"{ckpt}-{src}-{args.template}-k{args.k}-{digest}.jsonl")


def main(argv=None):
    try:
        _main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv):
    args = parse_args(argv)
    run = resolve(args)
    for note in run.notes:
        print(note, file=sys.stderr)
    try:
        model, tok = load_checkpoint(args.ckpt, run.device, run.dtype)
    except (OSError, KeyError, ValueError) as e:
        raise UsageError(f"--ckpt {args.ckpt}: cannot load ({e})") from None
    eos_ids = generation_eos_ids(args.ckpt)
    try:
        questions = [args.prompt] if args.prompt is not None else [p.question for p in run.problems]
        texts = [make_prompt(args.template, tok, q, instruct=args.eval) for q in questions]
    except Exception as e:  # a chat template's raise_exception or syntax error
        raise UsageError(f"--template {args.template}: the checkpoint's chat template failed ({e})") from None
    prompts = [tok.encode(t) for t in texts]
    max_new_tokens = _max_new_tokens(args, run, model, prompts)
    if args.prompt is not None:
        print(texts[0], end="", flush=True)
        stop_tokens, stop_strings = stops_for(tok, args.template, eos_ids)
        callback, flush = _stream(tok)
        try:
            generate(model, prompts, max_new_tokens=max_new_tokens,
                     temperature=1.0 if args.temperature is None else args.temperature,
                     top_p=1.0 if args.top_p is None else args.top_p, top_k=args.top_k, stop_tokens=stop_tokens,
                     stop_strings=stop_strings, tokenizer=tok, pad_id=tok.pad_id, seed=args.seed, callback=callback)
        except KeyboardInterrupt:
            flush()
            print("(stopped)", file=sys.stderr)
            sys.exit(130)
        flush()
        return
    temperature = 0.6 if args.temperature is None else args.temperature
    top_p = 0.95 if args.top_p is None else args.top_p
    settings = {"ckpt": os.path.abspath(args.ckpt), **run.source, "template": args.template, "k": args.k,
                "temperature": temperature, "top_p": top_p, "top_k": args.top_k, "max_new_tokens": max_new_tokens,
                "seed": args.seed}
    out = args.out or _default_out(args, settings)
    try:
        results = ResultsFile(out, settings)
        results.check(run.problems)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    budget, max_rows = (args.batch_tokens, 0) if args.batch_tokens else memory_budget(model, run.device)
    done = sum(i < len(run.problems) for i in results.records)
    print(f"eval: {len(run.problems)} problems x {args.k} samples, template {args.template}, T={temperature} "
          f"top_p={top_p}, max_new_tokens {max_new_tokens}, {run.device} {str(run.dtype).removeprefix('torch.')}"
          + (f"; resuming, {done} done" if done else ""), file=sys.stderr)
    try:
        res = evaluate(model, tok, run.problems, k=args.k, temperature=temperature, top_p=top_p, top_k=args.top_k,
                       max_new_tokens=max_new_tokens, batch_size=min(args.batch_size, max_rows or args.batch_size),
                       seed=args.seed, progress=True, template=args.template, token_budget=budget,
                       stop_ids=eos_ids, results=results)
    except KeyboardInterrupt:
        done = sum(i < len(run.problems) for i in results.records)
        print(f"\ninterrupted: {done}/{len(run.problems)} problems saved in {out}; resume with: python sample.py "
              + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
              + ("" if args.out else f" --out {shlex.quote(out)}"), file=sys.stderr)
        sys.exit(130)
    src = run.source.get("task") or run.source["problems"]
    print(_report(res, args.k, f"{src}: {res['n']} problems x {args.k} samples, template {args.template}, "
                               f"T={temperature} top_p={top_p}, max_new_tokens {max_new_tokens}"))
    summary = os.path.splitext(out)[0] + ".summary.json"
    tmp = summary + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, **{m: v for m, v in res.items() if m not in ("samples", "records")}},
                  f, indent=1)
    os.replace(tmp, summary)
    print(f"per-problem results: {out}\nsummary: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()
