"""
zero-mini-projection.py: FLOPs per stage of a train.py preset, counted from its config and model.py's parameter count,
and a PROJECTED wall time on one H200 (no GPU has run it; every assumption is a named argument below).

Stages and what each costs:
  tokenizer   BPE on tokenizer_mb of corpus, on the host CPU (measured here in CPU seconds, passed in);
  pretrain    pretrain_steps x batch_size x seq_len tokens, forward + backward: 6 N + causal attention per token;
  rollouts    rl_steps x prompts_per_step x group_size responses; decoding is overhead-bound at these sizes, so its
              time is decode steps x a per-step time; a sampler call decodes until its longest row stops, taken as
              the cap (max_new_tokens): an upper bound;
  rl train    the same rows (prompt + response) forward + backward once (mu=1: no old-policy pass), plus a
              reference-model forward when beta > 0 (the KL term);
  eval        held-out problems x k at every eval_every steps and step 0, in calls of eval_batch rows, plus the
              step-0 forced-mode probe (D, L, LV: 3 more evaluations); one sampler call per evaluation
              unless --eval_batch says otherwise (train.eval_batch on GPU).
Compute-bound stages take max(FLOPs / (peak x MFU), steps x kernel launches x launch time): small models on a GPU
are often launch-bound, and the larger of the two is what a step costs when launches overlap the kernels.

Run: python docs/zero-mini-projection.py [preset]     (default zero-small)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import train  # noqa: E402
from model import ModelConfig, count_params  # noqa: E402


def stage_flops(cfg: train.TrainConfig, vocab: int, prompt_len: int, mean_response: float) -> dict:
    """FLOPs and tokens per stage. mean_response: the mean response length (tokens) over all RL rollouts."""
    m = ModelConfig.from_preset(cfg.model, vocab_size=vocab, **cfg.model_overrides)
    n_matmul = count_params(m, active=True) - vocab * m.dim  # weights a token multiplies (not the embedding lookup)
    d_attn = m.n_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)

    def fwd(tokens, ctx):  # forward FLOPs for tokens that attend to about ctx/2 earlier positions on average
        return tokens * (2 * n_matmul + 2 * m.n_layers * (ctx / 2) * d_attn)

    pre_tokens = cfg.pretrain_steps * cfg.batch_size * cfg.seq_len
    rows = cfg.rl_steps * cfg.prompts_per_step * cfg.group_size
    row_len = prompt_len + mean_response
    n_evals = cfg.rl_steps // cfg.eval_every + 1 + (3 if cfg.probe else 0)
    eval_rows = n_evals * cfg.eval_problems * len(cfg.buckets.split(",")) * cfg.eval_k
    per_call = cfg.eval_batch or eval_rows // n_evals  # --eval_batch 0: one sampler call per evaluation on GPU
    return {
        "params": count_params(m), "active": count_params(m, active=True),
        "pretrain": {"tokens": pre_tokens, "flops": 3 * fwd(pre_tokens, cfg.seq_len), "steps": cfg.pretrain_steps},
        "rollouts": {"tokens": rows * mean_response, "flops": fwd(rows * mean_response, row_len),
                     "decode_steps": cfg.rl_steps * cfg.max_new_tokens},
        "rl train": {"tokens": rows * row_len, "flops": (3 + (cfg.beta > 0)) * fwd(rows * row_len, row_len),
                     "steps": cfg.rl_steps * -(-cfg.prompts_per_step * cfg.group_size // cfg.micro_batch)},
        "eval": {"tokens": eval_rows * mean_response, "flops": fwd(eval_rows * mean_response, row_len),
                 "decode_steps": n_evals * -(-eval_rows // n_evals // per_call) * cfg.max_new_tokens},
    }


def project(cfg, vocab=1024, prompt_len=92, mean_response=200.0, peak=790e12, mfu=0.25, decode_step_s=1.5e-3,
            kernels_per_train_step=5700, launch_s=5e-6, tokenizer_s=2.0, batch_build_s=0.0) -> dict:
    """Projected seconds per stage (see the module docstring for the model of each stage)."""
    f = stage_flops(cfg, vocab, prompt_len, mean_response)
    floor = kernels_per_train_step * launch_s
    sec = {
        "tokenizer": tokenizer_s,
        "pretrain": max(f["pretrain"]["flops"] / (peak * mfu), f["pretrain"]["steps"] * floor)
        + f["pretrain"]["steps"] * batch_build_s,
        "rollouts": f["rollouts"]["decode_steps"] * decode_step_s,
        "rl train": max(f["rl train"]["flops"] / (peak * mfu), f["rl train"]["steps"] * floor),
        "eval": f["eval"]["decode_steps"] * decode_step_s,
    }
    sec["total"] = sum(sec.values())
    return {"flops": f, "seconds": sec}


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "zero-small"
    cfg = train.TrainConfig(**train.TRAIN_PRESETS[name])
    r = project(cfg)
    f = r["flops"]
    print(f"{name}: {f['params'] / 1e6:.1f}M params ({f['active'] / 1e6:.1f}M active); PROJECTED H200 time, "
          f"assumptions in project()'s defaults")
    print(f"| stage | tokens | FLOPs | decode steps | projected s |\n|---|---|---|---|---|")
    for k in ("tokenizer", "pretrain", "rollouts", "rl train", "eval"):
        s = f.get(k, {})
        print(f"| {k} | {s.get('tokens', 0):.3g} | {s.get('flops', 0):.3g} | {s.get('decode_steps', '')} | "
              f"{r['seconds'][k]:.0f} |")
    print(f"| total | | {sum(s['flops'] for k, s in f.items() if isinstance(s, dict)):.3g} | | "
          f"{r['seconds']['total']:.0f} ({r['seconds']['total'] / 60:.1f} min) |")
