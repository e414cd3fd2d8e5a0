"""
checkpoint.py: every checkpoint the project writes is a Hugging Face model directory, and one loader reads
ours and foreign ones alike (train.py's resume and cached stages, sample.py, distill.py).

A checkpoint directory:
    config.json               transformers' config (model_type deepseek_v3 for our MLA+MoE models, qwen2/llama
                              for GQA ones; see model.config_to_hf) + bos/eos/pad ids
    model.safetensors         the weights under transformers' tensor names (model.hf_tensors)
    generation_config.json    R1's sampling settings (temperature 0.6, top_p 0.95) and the stop ids
    tokenizer.json            byte-level BPE that transformers.AutoTokenizer loads to the same ids as ours
    tokenizer_config.json     (tokenizer.save_hf)
    nano_r1.json              ours: {"step", "task", "preset", "train": TrainConfig dict, "model": ModelConfig dict,
                              ...}; the ModelConfig makes the round trip exact (fields HF has no name for)
    optimizer.safetensors     ours, only in resumable checkpoints: {param name::state name: tensor}, the param
                              groups as JSON in the file's metadata

So `transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load an
RL result directly, and `checkpoint.load(dir)` loads any qwen2/llama/deepseek_v3/deepseek_v2 directory (and our
earlier layout: config.json {"model": ...}, tokenizer/). One caveat: for model_type qwen2, transformers v5 builds
its own Qwen2Tokenizer, which re-imposes Qwen2's split regex; ids then match ours when the tokenizer uses that
regex (every Qwen checkpoint's does); PreTrainedTokenizerFast.from_pretrained(dir) always matches.

Simplifications:
 1. One safetensors file, never sharded (model.Transformer.save_pretrained shards, for export).
 2. Writes are atomic per directory (DIR.tmp, then rename); there is no async or distributed (DCP) writer.
 3. Under FSDP the full tensors are gathered one parameter at a time and rank 0 streams them into the file
    (its header is computed from the shapes first), so no rank ever holds a full state dict; loading reads one
    tensor at a time from the memory-mapped file and each rank keeps its own slice.

Use:
    checkpoint.save("runs/x/rl/step_000010", model, tok, {"step": 10, "task": "countdown"}, optimizer=opt)
    model, tok, meta = checkpoint.load("runs/x/rl/step_000010", device="cuda", dtype=torch.bfloat16)
    model, tok, meta = checkpoint.load("path/to/Qwen2.5-0.5B")           # foreign HF dir: meta == {}
    checkpoint.load_weights(sharded_model, dir); checkpoint.load_optimizer(sharded_model, opt, dir)   # resume

Shapes: tensors keep their parameter's shape; D the rotary part of a head (the RoPE frequencies are (D/2,)), E routed
experts (the router's bias and load counts are (E,)). A file's tensors are written as flat bytes.
"""
import dataclasses
import json
import os
import shutil

import torch
import torch.distributed as dist

from model import ModelConfig, Transformer, MoE, config_from_hf, config_to_hf, hf_tensors, load_hf_weights, \
    rope_frequencies, _rope_args
from tokenizer import Tokenizer, save_hf

META = "nano_r1.json"
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
           torch.int32: "I32", torch.bool: "BOOL", torch.float64: "F64"}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_sharded(t) -> bool:
    """True for an FSDP2 parameter (a DTensor: each rank holds a slice)."""
    return hasattr(t, "device_mesh") and hasattr(t, "full_tensor")


def full(t, dtype=None) -> torch.Tensor:
    """The whole tensor on every rank: a collective all-gather for an FSDP (DTensor) parameter, cast to dtype
    before the gather (a bf16 copy moves half the bytes); the tensor itself otherwise."""
    t = t.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.full_tensor() if is_sharded(t) else t


def copy_full_(target, value) -> None:
    """target <- value (a full tensor). For an FSDP parameter each rank copies only its own slice."""
    with torch.no_grad():
        if is_sharded(target):
            from torch.distributed.tensor import distribute_tensor
            local = target.to_local()
            mine = distribute_tensor(value.to(local.device, local.dtype), target.device_mesh, target.placements,
                                     src_data_rank=None)  # every rank holds value: slice it, no communication
            local.copy_(mine.to_local())
        else:
            target.copy_(value)

# -----------------------------------------------------------------------------
# Building a model without initialising it (meta device), then filling it from a checkpoint


def empty_model(cfg: ModelConfig, dtype=torch.float32, device="cpu", shard=None) -> Transformer:
    """A Transformer with uninitialised weights allocated once on device (no random init to overwrite) and its
    computed buffers (RoPE frequencies, fp32 router bias and load counts) set. shard (e.g. distributed.shard): applied
    on the meta device first, so each FSDP rank allocates only its slice."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to(dtype)
    if shard is not None:
        model = shard(model)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings and model.lm_head.weight is not model.embed.weight:  # to_empty re-creates parameters
        model.lm_head.weight = model.embed.weight  # module by module: tie them again
    model.inv_freq = rope_frequencies(*_rope_args(cfg))[0].to(device)  # (D/2,)
    model.aux_loss = torch.zeros((), device=device)  # ()
    for layer in model.layers:
        if isinstance(layer.ffn, MoE):  # fp32: the tiny +-gamma bias updates would vanish in bf16
            for name in ("bias", "load", "last_load"):
                setattr(layer.ffn, name, torch.zeros(cfg.n_routed_experts, device=device))  # (E,)
    return model


def read_meta(path: str) -> dict:
    """Our nano_r1.json, or {} for a foreign Hugging Face directory."""
    p = os.path.join(path, META)
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def model_config(path: str, **overrides) -> ModelConfig:
    """The ModelConfig of a checkpoint: ours exactly from nano_r1.json, a foreign one mapped from config.json."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (expected a checkpoint folder with config.json)")
    meta = read_meta(path)
    if "model" in meta:
        return ModelConfig(**{**meta["model"], **overrides})
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: expected a checkpoint folder; found "
                                f"{sorted(os.listdir(path))}")
    with open(cfg_path) as f:
        hf = json.load(f)
    if isinstance(hf.get("model"), dict):  # our layout before checkpoints became Hugging Face directories
        return ModelConfig(**{**hf["model"], **overrides})
    return config_from_hf(hf, **overrides)


def _load_legacy(model, path: str) -> tuple[Tokenizer, dict]:
    """Our earlier layout: config.json {"model": ModelConfig fields, ...}, model.safetensors under our own
    names, tokenizer/ (tokenizer.tiktoken). Read-only support so older runs still load."""
    from safetensors import safe_open
    state = model.state_dict(keep_vars=True)
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        names = [k.removeprefix("_orig_mod.") for k in f.keys()]
        missing = set(state) - set(names) - ({"lm_head.weight"} if model.cfg.tie_embeddings else set())
        if missing or set(names) - set(state):
            raise KeyError(f"checkpoint {path} does not match its config: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(set(names) - set(state))[:5]}")
        for key, name in zip(f.keys(), names):
            copy_full_(state[name], f.get_tensor(key))
    with open(os.path.join(path, "config.json")) as f:
        meta = {k: v for k, v in json.load(f).items() if k != "model"}
    return Tokenizer.load(os.path.join(path, "tokenizer")), meta


def load_weights(model, path: str) -> None:
    """Fill model (plain or FSDP-sharded) from the checkpoint at path, one tensor at a time."""
    with open(os.path.join(path, "config.json")) as f:
        ckpt_interleave = config_from_hf(json.load(f)).rope_interleave  # the layout of the rope rows in the file
    load_hf_weights(model, path, ckpt_interleave, assign=copy_full_)


def load(path: str, device="cpu", dtype=torch.float32, shard=None, **overrides):
    """(model in eval mode, tokenizer, meta) from one of our checkpoints or a Hugging Face directory (meta {}).
    shard: see empty_model (FSDP: each rank reads the tensors one by one and keeps its slice).
    overrides: ModelConfig fields (e.g. mla_absorb=True)."""
    cfg = model_config(path, **overrides)
    model = empty_model(cfg, dtype, device, shard)
    if os.path.exists(os.path.join(path, "tokenizer", "tokenizer.tiktoken")) and not read_meta(path):
        tokenizer, meta = _load_legacy(model, path)
        return model.eval(), tokenizer, meta
    load_weights(model, path)
    return model.eval(), Tokenizer.from_pretrained(path), read_meta(path)

# -----------------------------------------------------------------------------
# Writing: safetensors streamed tensor by tensor (the header first, from the shapes)


class SafetensorsWriter:
    """Write a .safetensors file one tensor at a time, in the order of `specs` [(name, shape, dtype)]:
    8-byte header length, the JSON header (names, dtypes, shapes, byte offsets), then the raw bytes."""

    def __init__(self, path: str, specs: list, metadata: dict | None = None):
        header, offset = {"__metadata__": metadata or {}}, 0
        for name, shape, dtype in specs:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.f = open(path, "wb")
        self.f.write(len(raw).to_bytes(8, "little") + raw)
        self.todo = [(name, tuple(shape), dtype) for name, shape, dtype in reversed(specs)]

    def write(self, name: str, t: torch.Tensor) -> None:
        want = self.todo.pop()
        if want != (name, tuple(t.shape), t.dtype):
            raise RuntimeError(f"safetensors stream out of order: got {name} {tuple(t.shape)} {t.dtype}, "
                               f"expected {want}")
        self.f.write(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)  # (numel * itemsize,)

    def close(self) -> None:
        self.f.close()
        if self.todo:
            raise RuntimeError(f"safetensors stream ended early: {len(self.todo)} tensors not written")


def _stream(path: str | None, items: list, metadata: dict | None = None) -> None:
    """items: [(our name, tensor, to_hf)] where to_hf(name, full tensor) -> [(file name, tensor)]. Every rank
    gathers each tensor in turn; rank 0 (path not None) writes it, then it is freed."""
    specs = [(n, v.shape, v.dtype) for name, t, to_hf in items  # the file's tensors, from shapes only (meta device)
             for n, v in to_hf(name, torch.empty(t.shape, dtype=t.dtype, device="meta"))]
    writer = SafetensorsWriter(path, specs, metadata) if path else None
    for name, t, to_hf in items:
        whole = full(t)  # t's full shape; a collective under FSDP
        if writer:
            for n, v in to_hf(name, whole):
                writer.write(n, v)
        del whole
    if writer:
        writer.close()


def save(path: str, model, tokenizer: Tokenizer | None, meta: dict | None = None, optimizer=None) -> None:
    """Write the checkpoint directory atomically (DIR.tmp, then rename). Under FSDP every rank calls it (the
    tensors are gathered one by one) and rank 0 writes."""
    cfg, rank = model.cfg, _rank()
    tmp = path + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    state = model.state_dict(keep_vars=True)
    _stream(os.path.join(tmp, "model.safetensors") if rank == 0 else None,
            [(k, v, lambda n, t: hf_tensors(cfg, n, t)) for k, v in state.items()], {"format": "pt"})
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        # one entry per optimizer state tensor: a parameter's moments (its shape) and step count (())
        items = [(f"{names[id(p)]}::{k}", v if torch.is_tensor(v) else torch.tensor(v), lambda n, t: [(n, t)])
                 for g in optimizer.param_groups for p in g["params"]
                 for k, v in sorted(optimizer.state.get(p, {}).items())]
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        _stream(os.path.join(tmp, "optimizer.safetensors") if rank == 0 else None, items,
                {"param_groups": json.dumps(groups, default=str)})
    if rank == 0:
        ids = {k: tokenizer.special_tokens.get(getattr(tokenizer, f"{k}_token") or "") if tokenizer else None
               for k in ("bos", "eos", "pad")}
        hf = config_to_hf(cfg, model.embed.weight.dtype) | {f"{k}_token_id": v for k, v in ids.items()}
        gen = {"do_sample": True, "temperature": 0.6, "top_p": 0.95,  # R1's evaluation setting
               **{f"{k}_token_id": v for k, v in ids.items() if v is not None}}
        ours = {**(meta or {}), "model": dataclasses.asdict(cfg)}
        for name, obj in (("config.json", hf), ("generation_config.json", gen), (META, ours)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=1, default=str)
        if tokenizer is not None:
            save_hf(tokenizer, tmp, model_max_length=cfg.max_seq_len)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()


def load_optimizer(model, optimizer, path: str) -> None:
    """Restore the optimizer state saved beside the weights, whatever the number of ranks that wrote it: each
    tensor is read from the memory-mapped file and each rank keeps its slice."""
    from safetensors import safe_open
    file = os.path.join(path, "optimizer.safetensors")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} not found: {path} was saved without optimizer state (not resumable)")
    params, names = dict(model.named_parameters()), {id(p): n for n, p in model.named_parameters()}
    current = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    with safe_open(file, "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        if [g["params"] for g in groups] != current:
            raise KeyError(f"{file} holds the state of other parameters (or another order) than this optimizer's")
        index = {n: i for i, n in enumerate(n for g in current for n in g)}  # load_state_dict matches by position
        state: dict = {}
        for key in f.keys():
            name, k = key.split("::", 1)
            value = f.get_tensor(key)
            p = params[name]
            if is_sharded(p) and value.shape == p.shape:  # a moment: keep this rank's slice
                from torch.distributed.tensor import distribute_tensor
                value = distribute_tensor(value.to(p.to_local().device), p.device_mesh, p.placements,
                                          src_data_rank=None)
            state.setdefault(index[name], {})[k] = value
    optimizer.load_state_dict({"state": state, "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                                for g in groups]})
