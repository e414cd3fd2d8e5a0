"""Stage 4 of r1-tiny again, with main's code, from the stage-3 model of the full run (whose stage-4 step metrics
for the reward model and the hidden rule were lost to a NaN mean in the code it ran)."""
import copy, json, random, sys, time
sys.path.insert(0, ".")  # run from the repository root: python docs/r1-tiny-stage4-rerun.py RUN_DIR
import torch
torch.set_num_threads(1)
import checkpoint, general, r1, tasks, train
from tokenizer import Tokenizer
from reward_model import RewardModel, pair_accuracy, train_reward_model
RUN = sys.argv[1] if len(sys.argv) > 1 else "runs/r1-tiny"  # a finished r1-tiny run
_, cfg = r1.parse_args(["--preset", "r1-tiny", "--out_dir", "runs/r1-tiny-stage4-rerun"])
rc = r1.recipe(cfg)
tok = Tokenizer.load(f"{RUN}/tokenizer")
base = checkpoint.load(f"{RUN}/base")[0].train()
s3 = checkpoint.load(f"{RUN}/stage3")[0].train()
pool, held = train.load_problems(rc)
general_pool = general.make_general(2000, "train", cfg.seed)
general_held = general.make_general(cfg.eval_general, "test", cfg.seed)
def pairs(split, n, seed):
    ps = general.preference_pairs(general.make_general(n, split, seed), random.Random(seed))
    enc = lambda p, t: tok.encode(tasks.r1_zero_prompt(p.question) + t)
    return [(enc(p, c), enc(p, r)) for p, c, r in ps]
t0 = time.time()
rm = RewardModel(copy.deepcopy(base))
train_reward_model(rm, pairs("train", cfg.rm_pairs, cfg.seed), cfg.rm_steps, cfg.sft_batch_size, cfg.rm_lr, tok.pad_id, seed=cfg.seed)
acc = pair_accuracy(rm, pairs("test", max(64, cfg.eval_general), cfg.seed + 1), tok.pad_id)
print("rm held-out pair accuracy", acc, flush=True)
rc4 = r1.recipe(cfg, "stage4", rl_steps=cfg.stage4_steps, probe=False)
import os; os.makedirs(rc4.out_dir, exist_ok=True)
train.stage_rl(rc4, tok, s3, torch.device("cpu"), False, print, problems=(pool, held),
               score=r1.all_scenario_score(rm, tok, cfg.language_weight),
               prompts=r1.mixed_prompts(pool, general_pool, rc4.prompts_per_step, cfg.general_prompt_share, cfg.seed))
row = r1.evaluate_row(s3, tok, held, general_held, cfg, rc)
print("row", json.dumps(row), flush=True)
print("seconds", time.time() - t0)
