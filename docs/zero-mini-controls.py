"""zero-mini's three controls (issue: does RL cause the behaviour, or only more training?), each from the base of a
finished `python train.py --preset zero-mini` run, with the run's own config, seed and held-out set:

  e-only    GRPO with training problems from bucket E only (evaluated on every bucket): if lengths grow only where
            the problems are hard, RL on easy problems should not make thinking longer.
  dr-grpo   GRPO with Dr. GRPO's loss (no std normalisation, a constant normaliser instead of the per-response
            mean): the length of wrong answers under each aggregation.
  e-half    GRPO on every bucket, with E drawn as often as M, H and VH together (half the prompts): does the
            easy bucket's own pressure (without KL, RL on E alone moves every bucket to the direct answer)
            separate the modes?
  pretrain  compute-matched continued pretraining on the same corpus: as many next-token steps as the RL run's
            FLOPs (2N per rollout token, 6N per trained token, 2N per reference token with a KL term; 6N per
            pretraining token), then the same evaluation.

Usage (from the repository root): python docs/zero-mini-controls.py RUN_DIR {e-only,e-half,dr-grpo,pretrain}
Writes RUN_DIR-<control>/ (metrics.jsonl, log.txt, ...); a pretraining control writes eval lines only."""
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, ".")
import torch  # noqa: E402

import checkpoint  # noqa: E402
import runlog  # noqa: E402
import train  # noqa: E402
from model import count_params  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

CONTROLS = ("e-only", "e-half", "dr-grpo", "pretrain")


def rl_flops(run: str, cfg: train.TrainConfig, n_params: int) -> float:
    """FLOPs of the RL run from its own step metrics: rollouts (2N per token, prompt and response), the
    policy's forward/backward on them (6N per token) and, with a KL term, the reference model's forward (2N)."""
    prompt = 20  # tokens of an R1-Zero prompt for "Compute 4736 + 2819" (measured with the corpus tokenizer: 18-21)
    steps = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    tokens = sum(cfg.prompts_per_step * cfg.group_size * (prompt + s["length"]) for s in steps if s["kind"] == "train")
    return (2 + 6 + 2 * (cfg.beta > 0)) * n_params * tokens


def main(run: str, control: str) -> None:
    if control not in CONTROLS:
        raise SystemExit(f"error: unknown control {control!r}; valid: {', '.join(CONTROLS)}")
    for need in ("train_config.json", "metrics.jsonl", "tokenizer", "base"):
        if not os.path.exists(os.path.join(run, need)):
            raise SystemExit(f"error: {run} is not a finished zero-mini run (no {need}); run "
                             f"python train.py --preset zero-mini --out_dir={run} first")
    cfg = train.TrainConfig(**json.load(open(os.path.join(run, "train_config.json"))))
    out = f"{run.rstrip('/')}-{control}"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(cfg.threads or 1)
    tok = Tokenizer.load(os.path.join(run, "tokenizer"))
    base = checkpoint.load(os.path.join(run, "base"))[0].train()
    pool, held = train.load_problems(cfg)
    log = runlog.console_log(out)

    t0 = time.time()
    if control == "e-only":
        c = dataclasses.replace(cfg, out_dir=out, probe=False)
        train.stage_rl(c, tok, base, torch.device("cpu"), False, log,
                       problems=([p for p in pool if p.bucket == "E"], held))
    elif control == "e-half":
        easy, rest = [p for p in pool if p.bucket == "E"], [p for p in pool if p.bucket != "E"]
        c = dataclasses.replace(cfg, out_dir=out, probe=False)
        train.stage_rl(c, tok, base, torch.device("cpu"), False, log,
                       problems=(rest + easy * max(1, round(len(rest) / len(easy))), held))
    elif control == "dr-grpo":
        c = dataclasses.replace(cfg, out_dir=out, probe=False, std_norm=False, token_level=False,
                                const_norm=cfg.max_new_tokens)
        train.stage_rl(c, tok, base, torch.device("cpu"), False, log, problems=(pool, held))
    else:
        n = count_params(base.cfg)
        steps = round(rl_flops(run, cfg, n) / (6 * n * cfg.batch_size * cfg.seq_len))
        lr = 0.1 * cfg.lr  # where pretraining's cosine ended
        log(f"[control] continued pretraining: {steps} steps at lr {lr:.1e} (the RL run's FLOPs)")
        opt = train.make_optimizer(base, lr, cfg.weight_decay)
        metrics = open(os.path.join(out, "metrics.jsonl"), "w")
        for i in range(steps + 1):
            if i in (0, steps // 2, steps):
                ev = train.evaluate(base.eval(), tok, held, cfg, seed=cfg.seed)
                base.train()
                metrics.write(json.dumps({"kind": "eval", "step": i, **ev}) + "\n")
                metrics.flush()
                log(f"[control] step {i} pass@1 {ev['pass@1']:.3f} length {ev['length']:.1f}")
            if i < steps:
                batch, learn = train.pretrain_batch(cfg, tok, cfg.pretrain_steps + i)  # (B, T+1), (B, T)
                train.pretrain_step(base, opt, batch, lr, learn=learn)
    log(f"[control] {control} done in {time.time() - t0:.0f}s -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[-1].split("\n")[0])
    main(sys.argv[1], sys.argv[2])
