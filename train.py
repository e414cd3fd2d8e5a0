"""
train.py: the entry point. Train a tokenizer, pretrain a DeepSeek-V3-style base model from scratch on the
synthetic corpus, then run pure RL with GRPO on the R1-Zero template (no SFT) and watch R1-Zero's behaviour
appear: held-out accuracy and response length rising through RL alone.

    python train.py --preset zero-small            # one GPU, ~10 minutes, pretraining included
    python train.py --preset zero-tiny             # 2 CPU cores, ~15 minutes
    python train.py --preset smoke                 # every stage in seconds (tests, CI)
    python train.py --preset zero-tiny --rl_steps=100 --out_dir=runs/mine   # any field is a flag
    python train.py --preset zero-tiny --resume    # continue a killed run
    python train.py --help                         # presets and every field with its default

Outputs of a run go under --out_dir (default runs/<preset>):
    tokenizer/  base/        cached stages (re-used by any later run whose stage config hashes the same)
    rl/step_NNNNNN/          RL checkpoints (model + optimizer as safetensors, state.json), atomic
    metrics.jsonl            one JSON line per RL step and per evaluation
    transcripts.md           full sampled responses every --transcript_every steps (read the "aha" here)
    plots.png                accuracy, length, format, reflection words, entropy, KL, expert load

Simplifications relative to the paper (DeepSeek-R1, arXiv 2501.12948):
 1. The base model is ours, pretrained in the run on a synthetic corpus (tasks.py) instead of DeepSeek-V3-Base
    on 14.8T web tokens; it is a miniature of the same architecture (MLA + DeepSeekMoE, aux-loss-free balancing).
 2. The task is synthetic multiplication with difficulty buckets (answers checked by rules) instead of
    competition math and code; real problem files and checkpoints are the zero-full preset's business.
 3. Rollouts stop at the first </answer> or end-of-text token; response length is capped (max_new_tokens).
 4. Pretraining packs documents into fixed-length rows without cross-document attention masks.
 5. One process per GPU; the sampler and the trainer share the weights (no separate inference engine).
 6. The loss defaults follow DAPO/Dr. GRPO-era practice where the notes argue for it (clip-higher, token-level
    aggregation); the paper's exact objective is one flag away (see grpo.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import grpo
import rewards
import sample
import tasks
from model import ModelConfig, Transformer, PRESETS as MODEL_PRESETS
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
# Config: one dataclass, presets as plain dicts of overrides, every field a --flag.

@dataclass
class TrainConfig:
    out_dir: str = ""                  # default runs/<preset>
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    compile: bool = False              # torch.compile the model for training
    threads: int = 0                   # CPU threads for torch (0: torch's default)
    # tokenizer
    vocab_size: int = 512
    tokenizer_mb: float = 2.0          # MB of corpus text the BPE is trained on
    # model: a preset of model.py, plus overrides given as --model.FIELD=value
    model: str = "zero-tiny"
    model_overrides: dict = field(default_factory=dict)
    # pretraining on the synthetic corpus
    pretrain_steps: int = 600
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    corpus_mix: dict = field(default_factory=dict)   # overrides of tasks.corpus_stream's mix
    # RL (GRPO) on the R1-Zero template
    task: str = "multiplication"
    buckets: str = "E,M,H,VH"          # training problem buckets
    rl_steps: int = 60
    prompts_per_step: int = 32
    group_size: int = 8
    max_new_tokens: int = 160
    rl_lr: float = 1e-4
    rollout_temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.0                  # KL coefficient (paper: 0.001); 0 builds no reference model
    std_norm: bool = True
    token_level: bool = True
    const_norm: int = 0
    drop_equal_groups: bool = False
    mask_truncated: bool = True
    mu: int = 1
    micro_batch: int = 64
    max_grad_norm: float = 1.0
    fused_head: bool = False           # lm_head fused into the log-prob kernel (never holds (B, T, V) logits)
    # evaluation and logging
    eval_every: int = 20
    eval_problems: int = 32            # held-out problems per bucket
    eval_k: int = 4                    # samples per problem (pass@1 over k, cons@k)
    transcript_every: int = 20
    ckpt_every: int = 20
    halt_after: int = 0                # stop the process after this many RL steps of this run (simulates a kill)

TRAIN_PRESETS = {
    "smoke": dict(vocab_size=300, tokenizer_mb=0.2, model="tiny-mla", pretrain_steps=6, batch_size=4, seq_len=64,
                  rl_steps=4, prompts_per_step=2, group_size=4, max_new_tokens=24, micro_batch=8,
                  eval_every=2, eval_problems=2, eval_k=2, transcript_every=2, ckpt_every=2, buckets="E,M"),
    "zero-tiny": dict(),  # the dataclass defaults are zero-tiny's settings
    "zero-small": dict(model="zero-small", vocab_size=1024, tokenizer_mb=8.0, pretrain_steps=3000, batch_size=64,
                       seq_len=512, lr=2e-3, warmup=200, rl_steps=120, prompts_per_step=64, group_size=16,
                       max_new_tokens=320, rl_lr=5e-5, micro_batch=256, eval_every=20, eval_problems=64, eval_k=8),
}

REFLECTIVE_WORDS = ["wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check"]


def parse_args(argv: list[str]) -> tuple[str, TrainConfig, bool]:
    """--preset NAME, --resume, --help and --FIELD=value (or --FIELD value); --model.FIELD=value for the model."""
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        print("presets:", ", ".join(TRAIN_PRESETS))
        for name, over in TRAIN_PRESETS.items():
            print(f"  {name}: {over}")
        print("\nfields (default = zero-tiny):")
        for f in dataclasses.fields(TrainConfig):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"  --{f.name}={default}")
        print("  --model.FIELD=value   any ModelConfig field:", ", ".join(f.name for f in dataclasses.fields(ModelConfig)))
        sys.exit(0)
    args, resume, preset = list(argv), False, "zero-tiny"
    pairs = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise SystemExit(f"error: unexpected argument {a!r}; flags look like --field=value")
        if a == "--resume":
            resume = True
        elif "=" in a:
            pairs.append(tuple(a[2:].split("=", 1)))
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            pairs.append((a[2:], args[i + 1]))
            i += 1
        else:
            raise SystemExit(f"error: flag {a} needs a value (--field=value)")
        i += 1
    for k, v in pairs:
        if k == "preset":
            preset = v
    if preset not in TRAIN_PRESETS:
        raise SystemExit(f"error: unknown preset {preset!r}; valid presets: {', '.join(TRAIN_PRESETS)}")
    cfg = TrainConfig(**TRAIN_PRESETS[preset])
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_names = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for k, v in pairs:
        if k == "preset":
            continue
        if k.startswith("model."):
            mk = k[len("model."):]
            if mk not in model_names:
                raise SystemExit(f"error: unknown model field {mk!r}; valid: {', '.join(model_names)}")
            cfg.model_overrides = {**cfg.model_overrides, mk: _convert(v, model_names[mk].type, k)}
        elif k in names:
            setattr(cfg, k, _convert(v, names[k].type, k))
        else:
            raise SystemExit(f"error: unknown field {k!r}; valid fields: {', '.join(names)} (and --model.FIELD=...)")
    cfg.out_dir = cfg.out_dir or os.path.join("runs", preset)
    validate(cfg)
    return preset, cfg, resume


def _convert(v: str, typ, name: str):
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ.startswith("bool"):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ.startswith("int"):
            return int(v)
        if typ.startswith("float"):
            return float(v)
        if typ.startswith("dict") or typ.startswith("list"):
            return json.loads(v)
        if typ.startswith("str"):
            return v
        return json.loads(v)  # e.g. "int | None", "dict | None"
    except (ValueError, json.JSONDecodeError):
        raise SystemExit(f"error: --{name}={v!r} is not a valid {typ}")


def validate(cfg: TrainConfig) -> None:
    """Catch bad values before any work starts."""
    def need(cond, msg):
        if not cond:
            raise SystemExit(f"error: {msg}")
    need(cfg.model in MODEL_PRESETS, f"--model={cfg.model!r} is not a model preset; valid: {', '.join(MODEL_PRESETS)}")
    for k in ("pretrain_steps", "rl_steps", "halt_after", "const_norm", "warmup", "threads"):
        need(getattr(cfg, k) >= 0, f"--{k} must be >= 0 (got {getattr(cfg, k)})")
    for k in ("batch_size", "seq_len", "prompts_per_step", "max_new_tokens", "mu", "micro_batch", "eval_every",
              "eval_problems", "eval_k", "transcript_every", "ckpt_every"):
        need(getattr(cfg, k) >= 1, f"--{k} must be >= 1 (got {getattr(cfg, k)})")
    need(cfg.group_size >= 2, f"--group_size must be >= 2 for group-relative advantages (got {cfg.group_size})")
    need(cfg.vocab_size >= 256 + 16, f"--vocab_size must be >= 272 (256 bytes + special tokens), got {cfg.vocab_size}")
    need(cfg.lr > 0 and cfg.rl_lr > 0, "--lr and --rl_lr must be > 0")
    need(cfg.rollout_temperature > 0, "--rollout_temperature must be > 0 (RL needs exploration)")
    need(cfg.beta >= 0 and cfg.clip_low >= 0 and cfg.clip_high >= 0, "--beta, --clip_low, --clip_high must be >= 0")
    need(cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda (got {cfg.device!r})")
    need(cfg.device != "cuda" or torch.cuda.is_available(), "--device=cuda but no CUDA device is available")
    known = tasks.TASKS if hasattr(tasks, "TASKS") else None
    need(known is None or cfg.task in known, f"--task={cfg.task!r} unknown; valid: {known}")


def config_hash(*parts) -> str:
    """A short hash of the config that defines a cached stage."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]

# -----------------------------------------------------------------------------
# Checkpoints: safetensors + JSON, written to a temp dir then renamed (atomic).

def save_checkpoint(path: str, model, optimizer=None, state: dict | None = None, tok: Tokenizer | None = None) -> None:
    """DIR/model.safetensors, DIR/config.json ({"model": ModelConfig fields, ...state}), DIR/tokenizer/ and,
    for resumable checkpoints, DIR/optimizer.safetensors. sample.load_checkpoint reads the same layout."""
    from safetensors.torch import save_file
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if tok is not None:
        tok.save(os.path.join(tmp, "tokenizer"))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              os.path.join(tmp, "model.safetensors"))
    meta = {"model": dataclasses.asdict(model.cfg), **(state or {})}
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        meta["optimizer_groups"] = groups
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _flatten_optimizer(opt) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def load_optimizer(opt, path: str, groups: list) -> None:
    from safetensors.torch import load_file
    flat = load_file(os.path.join(path, "optimizer.safetensors"))
    state: dict = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_model(path: str, device) -> tuple[Transformer, dict]:
    from safetensors.torch import load_file
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    model = Transformer(ModelConfig(**meta["model"]))
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return model.to(device), meta


def latest_rl_checkpoint(out_dir: str) -> str | None:
    d = os.path.join(out_dir, "rl")
    steps = sorted(x for x in os.listdir(d) if re.fullmatch(r"step_\d+", x)) if os.path.isdir(d) else []
    return os.path.join(d, steps[-1]) if steps else None

# -----------------------------------------------------------------------------
# Stage 1: the tokenizer (a small byte-level BPE trained on the corpus; digits stay single tokens).

def corpus_text(seed: int, megabytes: float, mix: dict) -> str:
    out, n = [], 0
    for doc in tasks.corpus_stream(seed=seed, mix=mix or None):
        out.append(doc)
        n += len(doc)
        if n >= megabytes * 1e6:
            break
    return "".join(out)


def stage_tokenizer(cfg: TrainConfig, log) -> Tokenizer:
    key = config_hash(cfg.vocab_size, cfg.tokenizer_mb, cfg.corpus_mix, cfg.seed)
    path = os.path.join(cfg.out_dir, "tokenizer")
    stamp = os.path.join(path, "stage.json")
    if os.path.exists(stamp) and json.load(open(stamp)).get("hash") == key:
        log(f"[tokenizer] cached at {path}")
        return Tokenizer.load(path)
    t0 = time.time()
    text = corpus_text(cfg.seed + 12345, cfg.tokenizer_mb, cfg.corpus_mix)
    tok = Tokenizer.train([text], cfg.vocab_size)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save(tmp)
    json.dump({"hash": key}, open(os.path.join(tmp, "stage.json"), "w"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log(f"[tokenizer] trained {tok.vocab_size} tokens on {len(text) / 1e6:.1f} MB in {time.time() - t0:.1f}s")
    return tok

# -----------------------------------------------------------------------------
# Stage 2: pretraining the base model from scratch on the synthetic corpus.

def model_config(cfg: TrainConfig, tok: Tokenizer) -> ModelConfig:
    over = {"vocab_size": tok.vocab_size, "max_seq_len": max(cfg.seq_len, 1024), **cfg.model_overrides}
    return ModelConfig.from_preset(cfg.model, **over)


def pretrain_batch(cfg: TrainConfig, tok: Tokenizer, step: int) -> torch.Tensor:
    """Rows of seq_len+1 tokens packed from a corpus stream seeded by (seed, step): resumable by construction."""
    need = cfg.batch_size * (cfg.seq_len + 1)
    ids: list[int] = []
    for doc in tasks.corpus_stream(seed=cfg.seed * 1_000_003 + step, mix=cfg.corpus_mix or None):
        ids.extend(tok.encode(doc))
        if len(ids) >= need:
            break
    return torch.tensor(ids[:need]).view(cfg.batch_size, cfg.seq_len + 1)  # (B, T+1)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def stage_pretrain(cfg: TrainConfig, tok: Tokenizer, device, log) -> Transformer:
    mcfg = model_config(cfg, tok)
    key = config_hash(dataclasses.asdict(mcfg), cfg.pretrain_steps, cfg.batch_size, cfg.seq_len, cfg.lr,
                      cfg.warmup, cfg.weight_decay, cfg.corpus_mix, cfg.seed, cfg.vocab_size, cfg.tokenizer_mb)
    path = os.path.join(cfg.out_dir, "base")
    if os.path.exists(os.path.join(path, "config.json")):
        model, meta = load_model(path, device)
        if meta.get("hash") == key and meta.get("done"):
            log(f"[pretrain] cached base model at {path}")
            return model
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start = 0
    partial = path + ".partial"
    if os.path.exists(os.path.join(partial, "config.json")):  # resume an interrupted pretraining
        m2, meta = load_model(partial, device)
        if meta.get("hash") == key:
            model = m2
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
            load_optimizer(opt, partial, meta["optimizer_groups"])
            start = meta["step"]
            log(f"[pretrain] resuming at step {start}")
    n_total, n_active = model.num_params(), model.num_params(active=True)
    log(f"[pretrain] {cfg.model}: {n_total / 1e6:.2f}M params ({n_active / 1e6:.2f}M active), "
        f"{cfg.pretrain_steps} steps x {cfg.batch_size}x{cfg.seq_len} tokens on {device}")
    fwd = torch.compile(model) if cfg.compile else model
    t0, tokens_seen = time.time(), 0
    for step in range(start, cfg.pretrain_steps):
        batch = pretrain_batch(cfg, tok, step).to(device)  # (B, T+1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.pretrain_steps, cfg.lr, cfg.warmup)
        with autocast(device):
            logits = fwd(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        aux = getattr(model, "aux_loss", None)
        total = loss + aux if torch.is_tensor(aux) else loss
        if not torch.isfinite(total):
            raise SystemExit(f"error: pretraining loss is {total.item()} at step {step}; last good checkpoint "
                             f"kept at {partial if start else 'none'}. Try a lower --lr.")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hasattr(model, "update_router_bias"):
            model.update_router_bias()
        tokens_seen += batch[:, :-1].numel()
        if step % 25 == 0 or step == cfg.pretrain_steps - 1:
            log(f"[pretrain] step {step:5d} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{tokens_seen / (time.time() - t0):,.0f} tok/s")
        if (step + 1) % 200 == 0 and step + 1 < cfg.pretrain_steps:
            save_checkpoint(partial, model, opt, {"hash": key, "step": step + 1}, tok)
    save_checkpoint(path, model, None, {"hash": key, "done": True, "step": cfg.pretrain_steps}, tok)
    shutil.rmtree(partial, ignore_errors=True)
    return model


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)

# -----------------------------------------------------------------------------
# SFT: next-token loss on completion tokens only (the prompt is context, not target). distill.py and R1's
# cold-start / rejection-sampling stages reuse it.

def sft_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, completion ids) pairs -> right-padded tokens (B, L) and a target mask (B, L-1)."""
    L = max(len(p) + len(c) for p, c in examples)
    tokens = torch.full((len(examples), L), pad_id, dtype=torch.long)  # (B, L)
    target = torch.zeros(len(examples), L - 1, dtype=torch.bool)  # (B, L-1): True where token t+1 is a completion token
    for i, (p, c) in enumerate(examples):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        target[i, len(p) - 1:len(p) + len(c) - 1] = True
    return tokens, target


def sft_loss(model, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # (B, L-1, V)
    nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")  # (B*(L-1),)
    return (nll * target.flatten()).sum() / target.sum().clamp_min(1)


def sft(model, examples, steps: int, batch_size: int, lr: float, pad_id: int, seed: int = 0, log=print,
        warmup: int = 10) -> list[float]:
    """Fine-tune on (prompt ids, completion ids) pairs for `steps` steps; returns the loss per step."""
    if not examples:
        raise ValueError("sft needs at least one (prompt, completion) example")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    losses = []
    model.train()
    for step in range(steps):
        batch = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        tokens, target = (x.to(device) for x in sft_batch(batch, pad_id))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, min(warmup, max(1, steps // 10)))
        with autocast(device):
            loss = sft_loss(model, tokens, target)
        if not torch.isfinite(loss):
            raise SystemExit(f"error: SFT loss is {loss.item()} at step {step}; try a lower learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hasattr(model, "update_router_bias"):
            model.update_router_bias()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            log(f"[sft] step {step:5d} loss {loss.item():.4f}")
    return losses

# -----------------------------------------------------------------------------
# Stage 3: R1-Zero. Pure RL with GRPO on the R1-Zero template, rule-based rewards only.

def prompt_ids(tok: Tokenizer, problems) -> list[list[int]]:
    return [tok.encode(tasks.r1_zero_prompt(p.question)) for p in problems]


def rollout(model, tok: Tokenizer, problems, cfg: TrainConfig, seed: int, temperature: float, n: int,
            top_p: float = 1.0, prefix: str = ""):
    """Sample n responses per problem and score them. Returns the Generation, texts and score dicts."""
    prompts = [ids + tok.encode(prefix) if prefix else ids for ids in prompt_ids(tok, problems)]
    stops = [tok.eos_id, tok.token_id("</answer>")]
    gen = sample.generate(model, prompts, max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                          top_p=top_p, n=n, stop_tokens=stops, pad_id=tok.pad_id, seed=seed)
    texts, scores = [], []
    for row in range(gen.tokens.shape[0]):
        ids = gen.tokens[row][gen.mask[row]].tolist()
        ids = [t for t in ids if t != tok.eos_id]
        text = prefix + tok.decode(ids)
        texts.append(text)
        scores.append(rewards.score(text, problems[row // n]))
    return prompts, gen, texts, scores


def build_rollouts(prompts, gen, scores, n: int, pad_id: int) -> dict:
    """Concatenate prompt and response per row, right-padded: what grpo.rl_step consumes."""
    rows, masks = [], []
    for r in range(gen.tokens.shape[0]):
        p = prompts[r // n]
        resp = gen.tokens[r][gen.mask[r]].tolist()
        rows.append(p + resp)
        masks.append([False] * len(p) + [True] * len(resp))
    L = max(len(x) for x in rows)
    tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)  # (B, L)
    for i, (x, m) in enumerate(zip(rows, masks)):
        tokens[i, :len(x)] = torch.tensor(x)
        mask[i, :len(m)] = torch.tensor(m)
    return {"tokens": tokens, "response_mask": mask, "truncated": gen.truncated.clone(),
            "rewards": torch.tensor([s["reward"] for s in scores], dtype=torch.float32)}


def reflection_rate(texts: list[str]) -> float:
    """Reflective words per 100 words of response, counted over the whole batch."""
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    hits = sum(1 for w in words if w in REFLECTIVE_WORDS)
    return 100.0 * hits / max(1, len(words))


def think_length(text: str, tok: Tokenizer) -> int:
    """Tokens inside <think>...</think> (the reasoning the model chose to write)."""
    m = re.search(r"<think>(.*?)(</think>|$)", text, re.S)
    return len(tok.encode(m.group(1))) if m else 0


def step_metrics(problems, gen, texts, scores, tok, n: int) -> dict:
    lengths = gen.lengths.float()  # (B*n,)
    acc = torch.tensor([s["accuracy"] for s in scores], dtype=torch.float32)
    fmt = torch.tensor([s["format"] for s in scores], dtype=torch.float32)
    m = {"reward": float(torch.tensor([s["reward"] for s in scores]).mean()),
         "accuracy": float(acc.mean()), "format": float(fmt.mean()),
         "length": float(lengths.mean()), "truncated": float(gen.truncated.float().mean()),
         "length_correct": float(lengths[acc > 0].mean()) if (acc > 0).any() else float("nan"),
         "length_wrong": float(lengths[acc == 0].mean()) if (acc == 0).any() else float("nan"),
         "reflection": reflection_rate(texts)}
    buckets = sorted({p.bucket for p in problems})
    for b in buckets:
        rows = [i for i in range(len(texts)) if problems[i // n].bucket == b]
        m[f"length/{b}"] = float(lengths[rows].mean())
        m[f"accuracy/{b}"] = float(acc[rows].mean())
    return m


def evaluate(model, tok, problems, cfg: TrainConfig, seed: int) -> dict:
    """Held-out pass@1 over k samples at T=0.6, top-p 0.95 (paper), cons@k, per bucket."""
    res = sample.evaluate(model, tok, problems, k=cfg.eval_k, temperature=0.6, top_p=0.95,
                          max_new_tokens=cfg.max_new_tokens, batch_size=max(8, cfg.micro_batch), seed=seed)
    out = {k: res[k] for k in ("pass@1", "cons@k", "pass@k", "format", "length", "truncated") if k in res}
    for b, r in res.get("by_bucket", {}).items():
        for k in ("pass@1", "cons@k", "length"):
            if k in r:
                out[f"{k}/{b}"] = r[k]
    out["reflection"] = reflection_rate([s["completion"] for s in res.get("samples", []) if "completion" in s])
    return out


def forced_mode_probe(model, tok, problems, cfg: TrainConfig, seed: int) -> dict:
    """Step 0: the same held-out problems answered with the response forced to start in the direct mode
    versus the long scratchpad mode (a prefix taken from tasks.render_response). The gap between the two is
    the headroom RL can exploit by learning to choose the long mode when it pays."""
    out = {}
    for mode in ("D", "L"):
        acc = {}
        for b in sorted({p.bucket for p in problems}):
            ps = [p for p in problems if p.bucket == b]
            prefixes = [tasks.mode_prefix(p, mode) for p in ps]
            hits = []
            for p, pre in zip(ps, prefixes):  # prefixes differ per problem: one small batch each
                _, _, _, scores = rollout(model, tok, [p], cfg, seed, temperature=0.6, n=cfg.eval_k,
                                          top_p=0.95, prefix=pre)
                hits += [s["accuracy"] for s in scores]
            acc[b] = sum(hits) / max(1, len(hits))
            out[f"forced_{mode}/{b}"] = acc[b]
    return out


def stage_rl(cfg: TrainConfig, tok: Tokenizer, base: Transformer, device, resume: bool, log) -> dict:
    model = base
    ref_model = None
    if cfg.beta > 0:  # a frozen copy of the base for the KL term; never built when beta == 0
        ref_model = Transformer(base.cfg).to(device)
        ref_model.load_state_dict(base.state_dict())
        ref_model.requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl_lr, betas=(0.9, 0.99), weight_decay=0.0)
    gcfg = grpo.GRPOConfig(group_size=cfg.group_size, clip_low=cfg.clip_low, clip_high=cfg.clip_high, beta=cfg.beta,
                           std_norm=cfg.std_norm, token_level=cfg.token_level, const_norm=cfg.const_norm,
                           drop_equal_groups=cfg.drop_equal_groups, mask_truncated=cfg.mask_truncated, mu=cfg.mu,
                           micro_batch=cfg.micro_batch, temperature=cfg.rollout_temperature,
                           max_grad_norm=cfg.max_grad_norm, fused_head=cfg.fused_head)
    buckets = cfg.buckets.split(",")
    train_pool = tasks.make_problems(cfg.task, 20000, split="train", seed=cfg.seed, buckets=buckets)
    eval_set = tasks.make_problems(cfg.task, cfg.eval_problems * len(buckets), split="test", seed=cfg.seed,
                                   buckets=buckets)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    start = 0
    ckpt = latest_rl_checkpoint(cfg.out_dir) if resume else None
    if ckpt:
        m2, meta = load_model(ckpt, device)
        model.load_state_dict(m2.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl_lr, betas=(0.9, 0.99), weight_decay=0.0)
        load_optimizer(opt, ckpt, meta["optimizer_groups"])
        start = meta["step"]
        history = [json.loads(l) for l in open(metrics_path)] if os.path.exists(metrics_path) else []
        history = [h for h in history if h["step"] < start or (h["step"] == start and h["kind"] == "eval")]
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        log(f"[rl] resumed from {ckpt} at step {start}")
    else:
        shutil.rmtree(os.path.join(cfg.out_dir, "rl"), ignore_errors=True)
        open(metrics_path, "w").close()
        open(os.path.join(cfg.out_dir, "transcripts.md"), "w").close()
    history = [json.loads(l) for l in open(metrics_path)]

    def record(entry):
        history.append(entry)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    if start == 0:
        t0 = time.time()
        ev = evaluate(model, tok, eval_set, cfg, seed=cfg.seed)
        ev.update(forced_mode_probe(model, tok, eval_set, cfg, seed=cfg.seed))
        record({"kind": "eval", "step": 0, **ev})
        log(f"[eval] step 0 " + fmt_metrics(ev) + f" ({time.time() - t0:.0f}s)")
    from tqdm import tqdm
    bar = tqdm(range(start, cfg.rl_steps), desc="rl", initial=start, total=cfg.rl_steps, disable=None)
    steps_this_run = 0
    for step in bar:
        t0 = time.time()
        rng = random.Random(cfg.seed * 1_000_003 + step)
        problems = rng.sample(train_pool, cfg.prompts_per_step)
        model.eval()
        prompts, gen, texts, scores = rollout(model, tok, problems, cfg, seed=cfg.seed * 7919 + step,
                                              temperature=cfg.rollout_temperature, n=cfg.group_size)
        model.train()
        batch = build_rollouts(prompts, gen, scores, cfg.group_size, tok.pad_id)
        diag = grpo.rl_step(model, opt, {k: v.to(device) for k, v in batch.items()}, gcfg, ref_model=ref_model)
        if not math.isfinite(float(diag["loss"])):
            raise SystemExit(f"error: non-finite GRPO loss at step {step}; last good checkpoint: "
                             f"{latest_rl_checkpoint(cfg.out_dir)}. Try a lower --rl_lr or --beta.")
        m = {"kind": "train", "step": step + 1, **step_metrics(problems, gen, texts, scores, tok, cfg.group_size),
             **{k: float(v) for k, v in diag.items() if isinstance(v, (int, float)) or torch.is_tensor(v)},
             "expert_imbalance": expert_imbalance(model), "seconds": time.time() - t0}
        record(m)
        bar.set_postfix(acc=f"{m['accuracy']:.2f}", len=f"{m['length']:.0f}", fmt=f"{m['format']:.2f}")
        log(f"[rl] step {step + 1:4d} reward {m['reward']:.3f} acc {m['accuracy']:.3f} fmt {m['format']:.2f} "
            f"len {m['length']:.1f} refl {m['reflection']:.2f} ({m['seconds']:.1f}s)", console_only=True)
        if (step + 1) % cfg.transcript_every == 0 or step == 0:
            write_transcripts(cfg, step + 1, problems, texts, scores)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.rl_steps:
            ev = evaluate(model, tok, eval_set, cfg, seed=cfg.seed)
            record({"kind": "eval", "step": step + 1, **ev})
            log(f"[eval] step {step + 1} " + fmt_metrics(ev))
            plot(history, os.path.join(cfg.out_dir, "plots.png"))
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.rl_steps:
            save_checkpoint(os.path.join(cfg.out_dir, "rl", f"step_{step + 1:06d}"), model, opt, {"step": step + 1}, tok)
            prune_checkpoints(cfg.out_dir, keep=2)
        steps_this_run += 1
        if cfg.halt_after and steps_this_run >= cfg.halt_after:
            log(f"[rl] halting after {steps_this_run} steps (--halt_after); continue with --resume")
            return {"halted": True}
    plot(history, os.path.join(cfg.out_dir, "plots.png"))
    evals = [h for h in history if h["kind"] == "eval"]
    summary = {"first": evals[0], "last": evals[-1]}
    json.dump(summary, open(os.path.join(cfg.out_dir, "summary.json"), "w"), indent=1)
    return summary


def expert_imbalance(model) -> float:
    """Max over MoE layers of (max expert load / mean load); 1.0 is perfect balance, nan for dense models."""
    loads = model.expert_load() if hasattr(model, "expert_load") else None
    if not loads:
        return float("nan")
    vals = loads.values() if isinstance(loads, dict) else [loads]
    worst = [float(v.max() / v.mean().clamp_min(1e-9)) for v in vals if torch.is_tensor(v) and v.numel() and v.sum() > 0]
    return max(worst) if worst else float("nan")


def prune_checkpoints(out_dir: str, keep: int) -> None:
    d = os.path.join(out_dir, "rl")
    steps = sorted(x for x in os.listdir(d) if re.fullmatch(r"step_\d+", x))
    for old in steps[:-keep]:
        shutil.rmtree(os.path.join(d, old), ignore_errors=True)


def write_transcripts(cfg, step, problems, texts, scores, per_step: int = 3) -> None:
    with open(os.path.join(cfg.out_dir, "transcripts.md"), "a") as f:
        f.write(f"\n## step {step}\n")
        for i in range(0, min(len(texts), per_step * cfg.group_size), cfg.group_size):
            p = problems[i // cfg.group_size]
            f.write(f"\n**{p.question}** (bucket {p.bucket}, gold {p.answer}, reward {scores[i]['reward']:.2f})\n\n"
                    f"```\n{texts[i]}\n```\n")


def fmt_metrics(m: dict) -> str:
    keys = [k for k in m if not k.startswith(("length/", "cons@k/"))]
    return " ".join(f"{k} {m[k]:.3f}" for k in keys if isinstance(m[k], float))

# -----------------------------------------------------------------------------
# Plots: the paper's figures in miniature (accuracy and length vs step), plus the diagnostics.

def plot(history: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = [h for h in history if h["kind"] == "train"]
    ev = [h for h in history if h["kind"] == "eval"]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    def series(ax, rows, keys, title):
        for k in keys:
            pts = [(h["step"], h[k]) for h in rows if k in h and h[k] == h[k]]
            if pts:
                ax.plot(*zip(*pts), marker="o" if rows is ev else None, ms=3, label=k)
        ax.set_title(title); ax.set_xlabel("RL step"); ax.grid(alpha=.3)
        if ax.lines:
            ax.legend(fontsize=7)
    buckets = sorted({k.split("/")[1] for h in ev for k in h if k.startswith("pass@1/")})
    series(axes[0, 0], ev, ["pass@1", "cons@k"] + [f"pass@1/{b}" for b in buckets], "held-out accuracy (T=0.6)")
    series(axes[0, 1], tr, ["length", "length_correct", "length_wrong"], "response length (tokens)")
    series(axes[0, 2], tr, [f"length/{b}" for b in buckets], "response length by bucket")
    series(axes[0, 3], tr, ["format", "accuracy", "truncated"], "train rollouts")
    series(axes[1, 0], tr, ["reflection"], "reflective words per 100 words")
    series(axes[1, 1], tr, ["entropy"], "policy entropy (nats/token)")
    series(axes[1, 2], tr, ["kl", "clip_frac"], "KL to reference / clip fraction")
    series(axes[1, 3], tr, ["expert_imbalance"], "expert load (max/mean)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)

# -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    preset, cfg, resume = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          (cfg.device if cfg.device != "auto" else "cpu"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out_dir, exist_ok=True)
    json.dump({"preset": preset, **dataclasses.asdict(cfg)}, open(os.path.join(cfg.out_dir, "train_config.json"), "w"),
              indent=1)
    log_file = open(os.path.join(cfg.out_dir, "log.txt"), "a")

    def log(msg: str, console_only: bool = False):
        if not console_only:
            print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t0 = time.time()
    log(f"== {preset} on {device} -> {cfg.out_dir}")
    tok = stage_tokenizer(cfg, log)
    base = stage_pretrain(cfg, tok, device, log)
    summary = stage_rl(cfg, tok, base, device, resume, log)
    log(f"== done in {time.time() - t0:.0f}s; metrics {cfg.out_dir}/metrics.jsonl, plots {cfg.out_dir}/plots.png")
    if "first" in summary:
        a, b = summary["first"], summary["last"]
        log(f"   held-out pass@1 {a['pass@1']:.3f} -> {b['pass@1']:.3f}, cons@k {a['cons@k']:.3f} -> "
            f"{b['cons@k']:.3f}, length {a['length']:.1f} -> {b['length']:.1f}")
    return summary


if __name__ == "__main__":
    main()
