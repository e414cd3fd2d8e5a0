"""
train.py: the entry point. Train a tokenizer, pretrain a DeepSeek-V3-style base model from scratch on the
synthetic corpus, then run pure RL with GRPO on the R1-Zero template (no SFT) and watch R1-Zero's behaviour
appear: held-out accuracy and response length rising through RL alone.

    python train.py --preset zero-small            # one GPU, ~10 minutes target, pretraining included (not yet run)
    python train.py --preset zero-tiny             # 2 CPU cores, ~12 minutes (measured)
    python train.py --preset smoke                 # every stage in seconds (tests, CI)
    python train.py --preset zero-tiny --rl_steps=100 --out_dir=runs/mine   # any field is a flag
    python train.py --preset zero-tiny --resume    # continue a killed run
    python train.py --help                         # presets and every field with its default

Outputs of a run go under --out_dir (default runs/<preset>):
    tokenizer/  base/        cached stages (re-used by a later run whose stage config and source files hash the same)
    rl/step_NNNNNN/          RL checkpoints (model + optimizer as safetensors, config.json, tokenizer/), atomic
    metrics.jsonl            one JSON line per RL step and per evaluation
    transcripts.md           full sampled responses every --transcript_every steps (read the "aha" here)
    plots.png                accuracy, length, format, reflection words, entropy, KL, expert load

Simplifications relative to the paper (DeepSeek-R1, arXiv 2501.12948):
 1. The base model is ours, pretrained in the run on a synthetic corpus (tasks.py) instead of DeepSeek-V3-Base
    on 14.8T web tokens; it is a miniature of the same architecture (MLA + DeepSeekMoE, aux-loss-free balancing).
 2. The tasks are synthetic with difficulty buckets and rule-checked answers (multiplication for zero-small,
    letter counting for the CPU-sized zero-tiny) instead of competition math and code; real problem files and
    real checkpoints are the zero-full presets' business.
 3. Rollouts stop at the first </answer> or end-of-text token; response length is capped (max_new_tokens).
 4. Pretraining packs documents into fixed-length rows without cross-document attention masks.
 5. No separate inference engine: the sampler uses the training weights (under FSDP, a gathered bf16 copy per rank).
 6. The loss defaults follow DAPO/Dr. GRPO-era practice where the notes argue for it (clip-higher, token-level
    aggregation); the paper's exact objective is one flag away (see grpo.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
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
import torch.distributed as dist
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
    init: str = ""                     # a Hugging Face checkpoint dir (with tokenizer.json): skip tokenizer + pretraining
    problems: str = ""                 # a JSONL problem file (else the synthetic --task)
    problems_kind: str = "gsm8k"       # gsm8k | math | generic (see tasks.load_jsonl)
    eval_path: str = ""                # held-out JSONL (else the first --eval_problems lines of --problems)
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
    eval_batch: int = 256              # sequences per sampler call during evaluation
    probe: bool = True                 # step-0 forced-mode probe (direct vs long scratchpad)
    transcript_every: int = 20
    ckpt_every: int = 20
    halt_after: int = 0                # stop the process after this many RL steps of this run (simulates a kill)
    wandb_project: str = ""            # also log metrics to Weights & Biases under this project (pip install wandb)

ZERO_TINY_MIX = {"tasks": {"count": 1.0}, "drills": {"count_run": 0.9, "successor": 0.1},
                 "kinds": {"drill": 0.55, "textbook": 0.1, "dialogue": 0.3, "filler": 0.05}}
# The corpus of the addition presets (zero-mini, zero-small): column-addition and one-digit-fact drills, worked
# examples, and R1-Zero dialogues whose mode (D/S/L/LV) is drawn independently of the problem's difficulty.
ZERO_MINI_MIX = {"tasks": {"addition": 1.0}, "drills": {"add_line": 0.7, "add_facts": 0.3},
                 "kinds": {"drill": 0.35, "textbook": 0.15, "dialogue": 0.45, "filler": 0.05},
                 "textbook_modes": {"D": 0.25, "S": 0.2, "L": 0.3, "LV": 0.25},
                 "dialogue_modes": {"D": 0.55, "S": 0.15, "L": 0.2, "LV": 0.1}}

TRAIN_PRESETS = {
    "smoke": dict(vocab_size=300, tokenizer_mb=0.2, model="tiny-mla", pretrain_steps=6, batch_size=4, seq_len=64,
                  rl_steps=4, prompts_per_step=2, group_size=4, max_new_tokens=24, micro_batch=8,
                  eval_every=2, eval_problems=2, eval_k=2, transcript_every=2, ckpt_every=2, buckets="E,M"),
    # zero-tiny: the CPU preset. Letter counting (tasks.py "count") instead of multiplication: a 1.5M-parameter
    # model can learn a running count from ~1M tokens of pretraining, which is what 2 CPU cores allow.
    "zero-tiny": dict(task="count", corpus_mix=ZERO_TINY_MIX,
                      pretrain_steps=700, batch_size=16, max_new_tokens=72, threads=1, rl_steps=40,
                      prompts_per_step=16, group_size=8, eval_every=10, transcript_every=10, ckpt_every=10,
                      eval_problems=32),
    # zero-micro: a student's first run: zero-tiny's count task on a 3-layer dense 0.5M-parameter model, 600
    # pretraining steps (2.5M tokens) and 20 GRPO steps; about 4 CPU-minutes on one thread (fewer pretraining steps
    # left the long mode unlearned and RL fell back to one-shot answers).
    "zero-micro": dict(task="count", corpus_mix=ZERO_TINY_MIX, model="tiny-mla",
                       model_overrides={"dim": 128, "n_layers": 3, "inter_dim": 256}, pretrain_steps=600,
                       batch_size=16, warmup=30, max_new_tokens=72, threads=1, rl_steps=20, prompts_per_step=8,
                       group_size=8, eval_every=5, transcript_every=5, ckpt_every=10, eval_problems=16),
    # zero-mini: the CPU preset on zero-small's task family (two-number addition with carries): thinking that grows
    # with difficulty (one scratchpad column per digit) and a verifying mode (add again in the other order, compare,
    # redo on a mismatch) that pays only where the model's own slips are frequent. Same recipe as zero-small.
    # 1600 pretraining steps (6.6M tokens): at 800 the model could not copy multi-digit numbers and the long mode
    # failed on H/VH; 800 + 800 more steps made it right on every bucket (docs/zero-mini.md). Not yet run end to end.
    "zero-mini": dict(task="addition", corpus_mix=ZERO_MINI_MIX, pretrain_steps=1600, batch_size=16, threads=1,
                      max_new_tokens=448, rl_steps=40, prompts_per_step=16, group_size=8, eval_every=10,
                      transcript_every=10, ckpt_every=10, eval_problems=32),
    # Full scale: a real base model (--init, a Hugging Face dir) on real problems, the paper's settings (Nature
    # version): 16 samples per prompt, 32 prompts per step, KL 0.001, rollout temperature 1.0, DeepSeekMath
    # aggregation, symmetric clip 0.2. Launch with torchrun across GPUs (see README).
    "zero-full": dict(init="REQUIRED", problems="", task="multiplication", pretrain_steps=0, rl_steps=1000,
                      prompts_per_step=32, group_size=16, max_new_tokens=1024, rl_lr=1e-6, beta=0.001,
                      clip_high=0.2, token_level=False, mask_truncated=False, micro_batch=8, fused_head=True,
                      eval_every=50, eval_problems=256, eval_k=8, transcript_every=10, ckpt_every=50, probe=False),
    # TinyZero-style: Countdown from a real base model.
    "zero-full-countdown": dict(init="REQUIRED", task="countdown", buckets="E,M,H", pretrain_steps=0, rl_steps=500,
                                prompts_per_step=32, group_size=16, max_new_tokens=512, rl_lr=1e-6, beta=0.001,
                                clip_high=0.2, token_level=False, micro_batch=8, fused_head=True, eval_every=50,
                                eval_problems=64, eval_k=8, ckpt_every=50, probe=False),
    # zero-small: zero-mini's recipe (task, corpus, template, rewards, loss) at GPU size: a 24M-parameter MLA+MoE model.
    "zero-small": dict(model="zero-small", task="addition", corpus_mix=ZERO_MINI_MIX, vocab_size=1024,
                       tokenizer_mb=8.0, pretrain_steps=3000, batch_size=64, seq_len=512, lr=2e-3, warmup=200,
                       rl_steps=120, prompts_per_step=64, group_size=16, max_new_tokens=448, rl_lr=5e-5,
                       micro_batch=256, eval_every=20, eval_problems=64, eval_k=8),
}

REFLECTIVE_WORDS = ["wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check"]


def parse_args(argv: list[str]) -> tuple[str, TrainConfig, bool]:
    """--preset NAME, --resume, --help and --FIELD=value (or --FIELD value); --model.FIELD=value for the model."""
    if "--help" in argv or "-h" in argv:
        print_help(__doc__, TRAIN_PRESETS, TrainConfig)
        print("  --model.FIELD=value   any ModelConfig field:", ", ".join(f.name for f in dataclasses.fields(ModelConfig)))
        sys.exit(0)
    pairs, switches = split_flags(argv, switches=("resume",))
    resume, preset = "resume" in switches, "zero-tiny"
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
            cfg.model_overrides = {**cfg.model_overrides, mk: convert_flag(v, model_names[mk].type, k)}
        elif k in names:
            setattr(cfg, k, convert_flag(v, names[k].type, k))
        else:
            raise SystemExit(f"error: unknown field {k!r}; valid fields: {', '.join(names)} (and --model.FIELD=...)")
    cfg.out_dir = cfg.out_dir or os.path.join("runs", preset)
    if cfg.init == "REQUIRED":
        raise SystemExit(f"error: preset {preset} starts from a real checkpoint: give --init PATH (a Hugging Face "
                         f"directory with config.json, *.safetensors and tokenizer.json)")
    validate(cfg)
    return preset, cfg, resume


def print_help(doc: str, presets: dict, config_cls) -> None:
    """The module docstring, the presets, and every field of the config dataclass with its default."""
    print(doc)
    print("presets:", ", ".join(presets))
    for name, over in presets.items():
        print(f"  {name}: {over}")
    print("\nfields (dataclass defaults; presets override some):")
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        print(f"  --{f.name}={default}")


def split_flags(argv: list[str], switches=()) -> tuple[list[tuple[str, str]], set[str]]:
    """[(field, value)] from --field=value or --field value, and the bare --switches named in `switches`."""
    pairs, seen, i = [], set(), 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise SystemExit(f"error: unexpected argument {a!r}; flags look like --field=value")
        if a[2:] in switches:
            seen.add(a[2:])
        elif "=" in a:
            pairs.append(tuple(a[2:].split("=", 1)))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((a[2:], argv[i + 1]))
            i += 1
        else:
            raise SystemExit(f"error: flag {a} needs a value (--field=value)")
        i += 1
    return pairs, seen


def convert_flag(v: str, typ, name: str):
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
    need(cfg.task in tasks.BUCKETS, f"--task={cfg.task!r} unknown; valid: {', '.join(tasks.BUCKETS)}")
    bad = [b for b in cfg.buckets.split(",") if b not in tasks.BUCKETS[cfg.task]]
    need(not bad, f"--buckets: unknown {bad} for {cfg.task}; valid: {','.join(tasks.BUCKETS[cfg.task])}")
    for k in ("init", "problems", "eval_path"):
        need(not getattr(cfg, k) or os.path.exists(getattr(cfg, k)), f"--{k}={getattr(cfg, k)!r} does not exist")
    need(not cfg.init or os.path.exists(os.path.join(cfg.init, "config.json")),
         f"--init={cfg.init!r} is not a Hugging Face checkpoint directory (no config.json)")
    need(cfg.problems_kind in ("gsm8k", "math", "generic"), "--problems_kind must be gsm8k, math or generic")
    need(not cfg.wandb_project or importlib.util.find_spec("wandb") is not None,
         "--wandb_project needs the wandb package (pip install wandb), which is not installed")
    need(cfg.group_size * cfg.eval_k >= 1 and cfg.eval_batch >= cfg.eval_k, "--eval_batch must be >= --eval_k")


def config_hash(*parts, code: tuple[str, ...] = ()) -> str:
    """A short hash of what defines a cached stage: its config values and the source files it runs (so editing
    tasks.py, say, retrains the tokenizer and the base model instead of silently reusing stale ones)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [open(os.path.join(here, f), encoding="utf-8").read() for f in code]
    blob = json.dumps([parts, sources], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]

# -----------------------------------------------------------------------------
# Distributed: torchrun starts one process per GPU; FSDP2 shards every transformer block (and the root) across
# them. A single process (WORLD == 1) never touches torch.distributed and trains exactly as written above it.

RANK, WORLD = 0, 1


def dist_init(pref: str) -> torch.device:
    """Pick the device; under torchrun (WORLD_SIZE > 1) also join the process group (nccl on GPU, gloo on CPU)."""
    global RANK, WORLD
    cuda = torch.cuda.is_available() and pref != "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        RANK, WORLD = dist.get_rank(), dist.get_world_size()
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
    return torch.device("cuda" if cuda else "cpu")


def shard(model: Transformer) -> Transformer:
    """FSDP2 (fully_shard) per transformer block, then the root; bf16 compute with fp32 gradient reduction on
    GPU. Parameters stay fp32 shards (the optimizer's master copy). A no-op in a single process."""
    if WORLD == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    on_gpu = next(model.parameters()).is_cuda
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu else MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def all_mean(x: float) -> float:
    """Mean of a float over ranks (the float itself in a single process)."""
    if WORLD == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / WORLD


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if WORLD == 1:
        return [obj]
    out = [None] * WORLD
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if WORLD > 1:
        dist.barrier()

# -----------------------------------------------------------------------------
# Checkpoints: safetensors + JSON, written to a temp dir then renamed (atomic). The full (gathered) state is
# saved, so a checkpoint written by N ranks loads in any number of processes, one included.

def full_model_state(model) -> dict:
    """The full state dict on rank 0 (CPU tensors); a collective under FSDP, so every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as the embedding; stored once
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(path: str, model, optimizer=None, state: dict | None = None, tok: Tokenizer | None = None) -> None:
    """DIR/model.safetensors, DIR/config.json ({"model": ModelConfig fields, ...state}), DIR/tokenizer/ and,
    for resumable checkpoints, DIR/optimizer.safetensors. sample.load_checkpoint reads the same layout.
    Every rank calls it (the state is gathered); rank 0 writes."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    weights = full_model_state(model)
    if optimizer is not None:
        osd = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if RANK == 0:
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if tok is not None:
            tok.save(os.path.join(tmp, "tokenizer"))
        save_file(weights, os.path.join(tmp, "model.safetensors"))
        meta = {"model": dataclasses.asdict(model.cfg), **(state or {})}
        if optimizer is not None:  # {param name::state name: tensor} + the param groups as JSON
            flat = {f"{name}::{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous().cpu()
                    for name, st in osd["state"].items() for k, v in st.items()}
            save_file(flat, os.path.join(tmp, "optimizer.safetensors"))
            meta["optimizer_groups"] = osd["param_groups"]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    barrier()


def load_optimizer(model, opt, path: str) -> None:
    """Restore an optimizer saved by save_checkpoint, whatever the number of ranks that wrote it."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    meta = json.load(open(os.path.join(path, "config.json")))
    state: dict = {}
    for key, v in load_file(os.path.join(path, "optimizer.safetensors")).items():
        name, k = key.split("::", 1)
        state.setdefault(name, {})[k] = v
    set_optimizer_state_dict(model, opt, {"state": state, "param_groups": meta["optimizer_groups"]},
                             options=StateDictOptions(full_state_dict=True))


def load_model(path: str, device) -> tuple[Transformer, dict]:
    """(model in train mode on device, the checkpoint's config.json)."""
    model, _ = sample.load_checkpoint(path, device=device)
    return model.train(), json.load(open(os.path.join(path, "config.json")))


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
    if cfg.init:  # a real checkpoint brings its own tokenizer.json
        return Tokenizer.from_pretrained(cfg.init)
    key = config_hash(cfg.vocab_size, cfg.tokenizer_mb, cfg.corpus_mix, cfg.seed, code=("tasks.py", "tokenizer.py"))
    path = os.path.join(cfg.out_dir, "tokenizer")
    stamp = os.path.join(path, "stage.json")
    cached = os.path.exists(stamp) and json.load(open(stamp)).get("hash") == key
    if cached:
        log(f"[tokenizer] cached at {path}")
    elif RANK == 0:
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
    barrier()
    return Tokenizer.load(path)

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


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def pretrain_step(model, opt, batch: torch.Tensor, lr: float, fwd=None) -> float:
    """One next-token step on this rank's rows of the global batch (B_local, T+1); returns the global mean loss.
    Under FSDP the gradient all-reduce averages the ranks' equal-sized shares: the global-batch gradient."""
    for g in opt.param_groups:
        g["lr"] = lr
    device = batch.device
    with autocast(device):
        logits = (fwd or model)(batch[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    aux = getattr(model, "aux_loss", None)
    total = loss + aux if torch.is_tensor(aux) else loss
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if hasattr(model, "update_router_bias"):
        model.update_router_bias()
    return all_mean(total.item())


def stage_pretrain(cfg: TrainConfig, tok: Tokenizer, device, log) -> Transformer:
    """Returns the base model (sharded under FSDP). Cached: a finished base with the same config hash is reused."""
    if cfg.init:
        log(f"[pretrain] skipped: starting from {cfg.init}")
        return shard(Transformer.from_pretrained(cfg.init).to(device).train())
    mcfg = model_config(cfg, tok)
    key = config_hash(dataclasses.asdict(mcfg), cfg.pretrain_steps, cfg.batch_size, cfg.seq_len, cfg.lr,
                      cfg.warmup, cfg.weight_decay, cfg.corpus_mix, cfg.seed, cfg.vocab_size, cfg.tokenizer_mb,
                      code=("tasks.py", "tokenizer.py", "model.py"))
    path, partial = os.path.join(cfg.out_dir, "base"), os.path.join(cfg.out_dir, "base.partial")
    if os.path.exists(os.path.join(path, "config.json")):
        model, meta = load_model(path, device)
        if meta.get("hash") == key and meta.get("done"):
            log(f"[pretrain] cached base model at {path}")
            return shard(model)
    torch.manual_seed(cfg.seed)
    model, start = Transformer(mcfg).to(device), 0
    resume = os.path.exists(os.path.join(partial, "config.json"))
    if resume:
        model2, meta = load_model(partial, device)
        resume = meta.get("hash") == key
        if resume:
            model, start = model2, meta["step"]
    model = shard(model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    if resume:
        load_optimizer(model, opt, partial)
        log(f"[pretrain] resuming at step {start}")
    n_total, n_active = mcfg_params(mcfg)
    log(f"[pretrain] {cfg.model}: {n_total / 1e6:.2f}M params ({n_active / 1e6:.2f}M active), "
        f"{cfg.pretrain_steps} steps x {cfg.batch_size}x{cfg.seq_len} tokens on {device} x{WORLD}")
    fwd = torch.compile(model) if cfg.compile else model
    t0, tokens_seen = time.time(), 0
    for step in range(start, cfg.pretrain_steps):
        batch = pretrain_batch(cfg, tok, step)[RANK::WORLD].to(device)  # (B/W, T+1) this rank's rows
        loss = pretrain_step(model, opt, batch, lr_at(step, cfg.pretrain_steps, cfg.lr, cfg.warmup), fwd)
        if not math.isfinite(loss):
            raise SystemExit(f"error: pretraining loss is {loss} at step {step}; the last good checkpoint is kept "
                             f"at {partial if os.path.exists(partial) else '(none yet)'}. Try a lower --lr.")
        tokens_seen += cfg.batch_size * cfg.seq_len
        if step % 25 == 0 or step == cfg.pretrain_steps - 1:
            log(f"[pretrain] step {step:5d} loss {loss:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{tokens_seen / (time.time() - t0):,.0f} tok/s")
        if (step + 1) % 200 == 0 and step + 1 < cfg.pretrain_steps:
            save_checkpoint(partial, model, opt, {"hash": key, "step": step + 1}, tok)
    save_checkpoint(path, model, None, {"hash": key, "done": True, "step": cfg.pretrain_steps}, tok)
    if RANK == 0:
        shutil.rmtree(partial, ignore_errors=True)
    return model


def mcfg_params(mcfg: ModelConfig) -> tuple[int, int]:
    from model import count_params
    return count_params(mcfg), count_params(mcfg, True)


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
            top_p: float = 1.0, prefixes: list[str] | None = None):
    """Sample n responses per problem (optionally forced to start with a per-problem prefix) and score them.
    Returns (prompt ids, the Generation, response texts, score dicts), rows prompt-major."""
    prefixes = prefixes or [""] * len(problems)
    prompts = [ids + tok.encode(pre) for ids, pre in zip(prompt_ids(tok, problems), prefixes)]
    stop_tokens, stop_strings = sample.stops_for(tok)
    gen = sample.generate(model, prompts, max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                          top_p=top_p, n=n, stop_tokens=stop_tokens, stop_strings=stop_strings, tokenizer=tok,
                          pad_id=tok.pad_id, seed=seed)
    texts, scores = [], []
    for row in range(gen.tokens.shape[0]):
        ids = gen.tokens[row, :gen.lengths[row]].tolist()
        text = prefixes[row // n] + tok.decode([t for t in ids if t != tok.eos_id])
        texts.append(text)
        scores.append(rewards.score(text, problems[row // n]))
    return prompts, gen, texts, scores


def build_rollouts(prompts, gen, scores, n: int, pad_id: int) -> dict:
    """Concatenate prompt and response per row, right-padded: what grpo.rl_step consumes."""
    rows, starts = [], []
    for r in range(gen.tokens.shape[0]):
        p = prompts[r // n]
        rows.append(p + gen.tokens[r, :gen.lengths[r]].tolist())
        starts.append(len(p))
    L = max(len(x) for x in rows)
    tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)  # (B, L) True on response tokens
    for i, (x, s0) in enumerate(zip(rows, starts)):
        tokens[i, :len(x)] = torch.tensor(x)
        mask[i, s0:len(x)] = True
    return {"tokens": tokens, "response_mask": mask, "truncated": gen.truncated.cpu().clone(),
            "rewards": torch.tensor([s["reward"] for s in scores], dtype=torch.float32)}


def reflection_rate(texts: list[str]) -> float:
    """Reflective words (the R1 paper's list) per 100 words of response, over the whole batch."""
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    hits = sum(1 for w in words if w in REFLECTIVE_WORDS)
    return 100.0 * hits / max(1, len(words))


def step_metrics(rows: list[dict]) -> dict:
    """Training-rollout metrics from per-response records {bucket, text, reward, accuracy, format, length,
    truncated}: overall, per bucket, and the lengths of correct and wrong answers separately."""
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    m = {k: mean([r[k] for r in rows]) for k in ("reward", "accuracy", "format", "length", "truncated")}
    m["length_correct"] = mean([r["length"] for r in rows if r["accuracy"] > 0])
    m["length_wrong"] = mean([r["length"] for r in rows if r["accuracy"] == 0])
    m["reflection"] = reflection_rate([r["text"] for r in rows])
    for b in sorted({r["bucket"] for r in rows}):
        m[f"length/{b}"] = mean([r["length"] for r in rows if r["bucket"] == b])
        m[f"accuracy/{b}"] = mean([r["accuracy"] for r in rows if r["bucket"] == b])
        m[f"long/{b}"] = mean([r["long"] for r in rows if r["bucket"] == b and r["long"] is not None])
        m[f"lv/{b}"] = mean([r["lv"] for r in rows if r["bucket"] == b and r.get("lv") is not None])
    return m


def long_mode(problem, text: str) -> float | None:
    """1.0 if the response opens the long step-by-step mode of the corpus (L or LV, see tasks.response_mode),
    else 0.0; None for tasks without one (real problem files)."""
    mode = tasks.response_mode(problem, text)
    return None if mode is None else float(mode in ("L", "LV"))


def verify_mode(problem, text: str) -> float | None:
    """1.0 if the response is a long scratchpad that checks itself (mode LV), else 0.0; None without modes."""
    mode = tasks.response_mode(problem, text)
    return None if mode is None else float(mode == "LV")


def evaluate(model, tok, problems, cfg: TrainConfig, seed: int) -> dict:
    """Held-out pass@1 over k samples at T=0.6, top-p 0.95 (the paper's protocol), cons@k, per bucket."""
    res = sample.evaluate(model, tok, problems, k=cfg.eval_k, temperature=0.6, top_p=0.95,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch, seed=seed)
    out = {k: res[k] for k in ("pass@1", "cons@k", "pass@k", "format", "length", "truncated")}
    for b, r in res["by_bucket"].items():
        for k in ("pass@1", "cons@k", "length"):
            out[f"{k}/{b}"] = r[k]
    out["reflection"] = reflection_rate([s["completion"] for s in res["samples"]])
    by_question = {p.question: p for p in problems}
    for b in res["by_bucket"]:
        for name, fn in (("long", long_mode), ("lv", verify_mode)):
            xs = [fn(by_question[s["question"]], s["completion"]) for s in res["samples"] if s["bucket"] == b]
            xs = [x for x in xs if x is not None]
            if xs:
                out[f"{name}/{b}"] = sum(xs) / len(xs)
    return out


def forced_mode_probe(model, tok, problems, cfg: TrainConfig, seed: int) -> dict:
    """Step 0 only: the held-out problems answered with the response forced to open in the direct mode (D),
    the long scratchpad (L) and the long scratchpad that checks itself (LV), with tasks.mode_prefix. The gaps
    are the headroom RL can exploit by learning to choose the long (and verifying) mode where it pays."""
    out = {}
    for mode in ("D", "L", "LV"):
        _, gen, _, scores = rollout(model, tok, problems, cfg, seed, temperature=0.6, n=cfg.eval_k, top_p=0.95,
                                    prefixes=[tasks.mode_prefix(p, mode) for p in problems])
        for b in sorted({p.bucket for p in problems}):
            rows = [i for i in range(len(scores)) if problems[i // cfg.eval_k].bucket == b]
            out[f"forced_{mode}/{b}"] = sum(scores[i]["accuracy"] for i in rows) / len(rows)
            out[f"forced_{mode}_length/{b}"] = sum(int(gen.lengths[i]) for i in rows) / len(rows)  # after the prefix
    return out


def load_problems(cfg: TrainConfig) -> tuple[list, list]:
    """(training pool, held-out set): a synthetic task's train/test splits, or a user's JSONL file whose
    first eval_problems lines are held out (or a separate --eval_path file)."""
    if cfg.problems:
        pool = tasks.load_jsonl(cfg.problems, kind=cfg.problems_kind)
        if cfg.eval_path:
            return pool, tasks.load_jsonl(cfg.eval_path, kind=cfg.problems_kind)[:cfg.eval_problems]
        if len(pool) <= cfg.eval_problems:
            raise SystemExit(f"error: {cfg.problems} has {len(pool)} problems; need more than --eval_problems="
                             f"{cfg.eval_problems} (they are held out) or give --eval_path")
        return pool[cfg.eval_problems:], pool[:cfg.eval_problems]
    buckets = cfg.buckets.split(",")
    return (tasks.make_problems(cfg.task, 20000, split="train", seed=cfg.seed, buckets=buckets),
            tasks.make_problems(cfg.task, cfg.eval_problems * len(buckets), split="test", seed=cfg.seed,
                                buckets=buckets))


def global_normaliser(batch: dict, gcfg) -> float | None:
    """Under FSDP the loss weights must divide by the GLOBAL count (loss tokens for token-level aggregation,
    responses otherwise), divided by the world size because the gradient all-reduce averages ranks."""
    if WORLD == 1:
        return None
    m = grpo.loss_mask(batch["response_mask"], batch["rewards"], batch["truncated"], gcfg)[:, 1:]  # (B, T)
    count = m.sum() if gcfg.token_level else (m.sum(1) > 0).sum()
    count = count.double().reshape(1)
    dist.all_reduce(count)
    return float(count) / WORLD


class Replica:
    """The weights the sampler uses. A single process samples from the training model itself; under FSDP each
    rank samples from a full (gathered) copy refreshed after every update, so ranks can decode different
    numbers of steps without waiting on each other's all-gathers."""

    def __init__(self, model):
        self.model, self.copy = model, None

    def get(self) -> Transformer:
        if WORLD == 1:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        if self.copy is None:  # bf16 on GPU: half the memory of the fp32 master weights
            device = next(iter(sd.values())).device
            self.copy = Transformer(self.model.cfg).to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.copy.load_state_dict(sd, strict=False)
        return self.copy.eval()


def stage_rl(cfg: TrainConfig, tok: Tokenizer, base: Transformer, device, resume: bool, log) -> dict:
    """R1-Zero: GRPO from the base model. Each rank samples whole groups for its share of the step's prompts."""
    model = base
    ref_model = None
    if cfg.beta > 0:  # a frozen copy of the base for the KL term (sharded too); never built when beta == 0
        ref_model = Transformer(model.cfg).to(device)
        ref_model.load_state_dict(full_model_state_all(model), strict=False)
        ref_model = shard(ref_model.requires_grad_(False).eval())
    opt = make_optimizer(model, cfg.rl_lr, 0.0, betas=(0.9, 0.99))
    gcfg = grpo.GRPOConfig(group_size=cfg.group_size, clip_low=cfg.clip_low, clip_high=cfg.clip_high, beta=cfg.beta,
                           std_norm=cfg.std_norm, token_level=cfg.token_level, const_norm=cfg.const_norm,
                           drop_equal_groups=cfg.drop_equal_groups, mask_truncated=cfg.mask_truncated, mu=cfg.mu,
                           micro_batch=cfg.micro_batch, temperature=cfg.rollout_temperature,
                           max_grad_norm=cfg.max_grad_norm, fused_head=cfg.fused_head)
    train_pool, eval_set = load_problems(cfg)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    transcripts = os.path.join(cfg.out_dir, "transcripts.md")
    start = 0
    ckpt = latest_rl_checkpoint(cfg.out_dir) if resume else None
    if ckpt:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, load_file(os.path.join(ckpt, "model.safetensors")),
                             options=StateDictOptions(full_state_dict=True, strict=False))
        load_optimizer(model, opt, ckpt)
        start = json.load(open(os.path.join(ckpt, "config.json")))["step"]
        log(f"[rl] resumed from {ckpt} at step {start}")
    history = []
    if RANK == 0:
        if ckpt:  # drop what was logged after the checkpoint: those steps run again, identically
            history = [json.loads(l) for l in open(metrics_path)] if os.path.exists(metrics_path) else []
            history = [h for h in history if h["step"] <= start]
        else:
            shutil.rmtree(os.path.join(cfg.out_dir, "rl"), ignore_errors=True)
            open(transcripts, "w").close()
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)

    wandb_run = None
    if cfg.wandb_project and RANK == 0:
        import wandb
        wandb_run = wandb.init(project=cfg.wandb_project, config=dataclasses.asdict(cfg), resume="allow")

    def record(entry):
        history.append(entry)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if wandb_run is not None:
            wandb_run.log({f"{entry['kind']}/{k}": v for k, v in entry.items() if isinstance(v, (int, float))},
                          step=entry["step"])

    replica = Replica(model)

    def run_eval(step: int, probe: bool = False):
        sampler = replica.get()  # collective under FSDP: every rank refreshes its copy
        if RANK == 0:
            t0 = time.time()
            ev = evaluate(sampler, tok, eval_set, cfg, seed=cfg.seed)
            if probe and cfg.probe and not cfg.problems:
                ev.update(forced_mode_probe(sampler, tok, eval_set, cfg, seed=cfg.seed))
            record({"kind": "eval", "step": step, **ev})
            log(f"[eval] step {step} " + fmt_metrics(ev) + f" ({time.time() - t0:.0f}s)")
            plot(history, os.path.join(cfg.out_dir, "plots.png"))
        barrier()

    if start == 0:
        run_eval(0, probe=True)
    from tqdm import tqdm
    bar = tqdm(range(start, cfg.rl_steps), desc="rl", initial=start, total=cfg.rl_steps,
               disable=None if RANK == 0 else True)
    steps_this_run = 0
    per_rank = cfg.prompts_per_step // WORLD
    for step in bar:
        t0 = time.time()
        problems = random.Random(cfg.seed * 1_000_003 + step).sample(train_pool, cfg.prompts_per_step)
        mine = problems[RANK * per_rank:(RANK + 1) * per_rank]  # whole groups stay on one rank
        prompts, gen, texts, scores = rollout(replica.get(), tok, mine, cfg, seed=(cfg.seed * 7919 + step) * 64 + RANK,
                                              temperature=cfg.rollout_temperature, n=cfg.group_size)
        t_sample = time.time() - t0
        batch = build_rollouts(prompts, gen, scores, cfg.group_size, tok.pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        model.train()
        diag = grpo.rl_step(model, opt, batch, gcfg, ref_model=ref_model, normaliser=global_normaliser(batch, gcfg))
        diag = {k: all_mean(float(v)) for k, v in diag.items()}
        if not (math.isfinite(diag["loss"]) and math.isfinite(diag["grad_norm"])):
            raise SystemExit(f"error: non-finite GRPO loss at step {step + 1}; the last good checkpoint is "
                             f"{latest_rl_checkpoint(cfg.out_dir)}. Try a lower --rl_lr or --beta.")
        rows = [{"bucket": mine[i // cfg.group_size].bucket, "text": texts[i], "reward": s["reward"],
                 "long": long_mode(mine[i // cfg.group_size], texts[i]),
                 "lv": verify_mode(mine[i // cfg.group_size], texts[i]),
                 "accuracy": s["accuracy"], "format": s["format"], "length": int(gen.lengths[i]),
                 "truncated": float(gen.truncated[i])} for i, s in enumerate(scores)]
        rows = [r for part in all_gather(rows) for r in part]
        if RANK == 0:
            m = {"kind": "train", "step": step + 1, **step_metrics(rows), **diag,
                 "expert_imbalance": expert_imbalance(model), "seconds": time.time() - t0, "sample_seconds": t_sample}
            record(m)
            bar.set_postfix(acc=f"{m['accuracy']:.2f}", len=f"{m['length']:.0f}", fmt=f"{m['format']:.2f}")
            log(f"[rl] step {step + 1:4d} reward {m['reward']:.3f} acc {m['accuracy']:.3f} fmt {m['format']:.2f} "
                f"len {m['length']:.1f} refl {m['reflection']:.2f} ent {diag['entropy']:.2f} "
                f"({m['seconds']:.1f}s, sampling {t_sample:.1f}s)", console_only=True)
            if (step + 1) % cfg.transcript_every == 0 or step == 0:
                write_transcripts(transcripts, step + 1, mine, texts, scores, cfg.group_size)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.rl_steps:
            run_eval(step + 1)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.rl_steps:
            save_checkpoint(os.path.join(cfg.out_dir, "rl", f"step_{step + 1:06d}"), model, opt, {"step": step + 1}, tok)
            if RANK == 0:
                prune_checkpoints(cfg.out_dir, keep=2)
        steps_this_run += 1
        if cfg.halt_after and steps_this_run >= cfg.halt_after and step + 1 < cfg.rl_steps:
            log(f"[rl] halting after {steps_this_run} steps (--halt_after); continue with --resume")
            return {"halted": True}
    if RANK != 0:
        return {}
    plot(history, os.path.join(cfg.out_dir, "plots.png"))
    evals = [h for h in history if h["kind"] == "eval"]
    summary = {"first": evals[0], "last": evals[-1]}
    json.dump(summary, open(os.path.join(cfg.out_dir, "summary.json"), "w"), indent=1)
    return summary


def full_model_state_all(model) -> dict:
    """The full state dict on every rank (the model's own state_dict in a single process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


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


def write_transcripts(path: str, step: int, problems, texts, scores, group_size: int, per_step: int = 3) -> None:
    with open(path, "a") as f:
        f.write(f"\n## step {step}\n")
        for i in range(0, min(len(texts), per_step * group_size), group_size):
            p = problems[i // group_size]
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
    series(axes[0, 3], tr, ["format", "accuracy", "truncated"] + [f"long/{b}" for b in buckets]
           + [f"lv/{b}" for b in buckets], "train rollouts (long / lv = long / verifying mode share)")
    series(axes[1, 0], tr, ["reflection"], "reflective words per 100 words")
    series(axes[1, 1], tr, ["entropy"], "policy entropy (nats/token)")
    series(axes[1, 2], tr, ["kl", "clip_low", "clip_high"], "KL to reference / clipped fraction")
    series(axes[1, 3], tr, ["expert_imbalance"], "expert load (max/mean)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)

# -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    preset, cfg, resume = parse_args(sys.argv[1:] if argv is None else argv)
    device = dist_init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    validate_world(cfg)
    if RANK == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        json.dump({"preset": preset, **dataclasses.asdict(cfg)},
                  open(os.path.join(cfg.out_dir, "train_config.json"), "w"), indent=1)
    barrier()
    log_file = open(os.path.join(cfg.out_dir, "log.txt"), "a") if RANK == 0 else None

    def log(msg: str, console_only: bool = False):
        if RANK != 0:
            return
        if not console_only:
            print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t0 = time.time()
    log(f"== {preset} on {device}" + (f" x {WORLD} ranks (FSDP)" if WORLD > 1 else "") + f" -> {cfg.out_dir}")
    tok = stage_tokenizer(cfg, log)
    base = stage_pretrain(cfg, tok, device, log)
    summary = stage_rl(cfg, tok, base, device, resume, log)
    log(f"== done in {time.time() - t0:.0f}s; metrics {cfg.out_dir}/metrics.jsonl, plots {cfg.out_dir}/plots.png")
    if "first" in summary:
        a, b = summary["first"], summary["last"]
        log(f"   held-out pass@1 {a['pass@1']:.3f} -> {b['pass@1']:.3f}, cons@k {a['cons@k']:.3f} -> "
            f"{b['cons@k']:.3f}, length {a['length']:.1f} -> {b['length']:.1f}")
    return summary


def validate_world(cfg: TrainConfig) -> None:
    """Checks that need the world size: every rank gets equal whole shares."""
    if cfg.batch_size % WORLD or cfg.prompts_per_step % WORLD:
        raise SystemExit(f"error: --batch_size ({cfg.batch_size}) and --prompts_per_step ({cfg.prompts_per_step}) "
                         f"must be divisible by the number of processes ({WORLD})")


if __name__ == "__main__":
    main()
