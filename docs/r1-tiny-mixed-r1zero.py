"""R1-Zero in the mixed world (r1-tiny-mixed): the base and R1-Zero rows of r1.py's table, plus the share of
reasoning that opens in Japanese (opens_ja) and the share with any mixing (mixed_any). One-off measurement, run from
the repository root: OMP_NUM_THREADS=1 nice -n 10 python docs/r1-tiny-mixed-r1zero.py runs/r1-tiny-mixed
(21 minutes wall on the shared 2-core CPU; results in docs/r1-tiny-mixed-r1zero.json)."""
import copy, json, sys, time
sys.path.insert(0, ".")
import torch
import r1, train, general, sample, distill

out = sys.argv[1]
_, cfg = r1.parse_args(["--preset", "r1-tiny-mixed", "--out_dir", out])
device = train.dist_init(cfg.device)
rc = r1.recipe(cfg)
torch.set_num_threads(1)
pool, held = train.load_problems(rc)
general_held = general.make_general(cfg.eval_general, "test", cfg.seed)
t0 = time.time()
tok = train.stage_tokenizer(rc, print)
base = train.stage_pretrain(rc, tok, device, print)

def row(model):
    r = r1.evaluate_row(model, tok, held, general_held, cfg, rc)
    res = sample.evaluate(model, tok, held, k=cfg.eval_k, temperature=0.6, top_p=0.95,
                          max_new_tokens=rc.max_new_tokens, batch_size=256, seed=cfg.seed)
    firsts = [distill.reasoning_text(s["completion"]).split()[:1] for s in res["samples"]]
    r["opens_ja"] = sum(bool(f) and general.language_of(f[0]) == "ja" for f in firsts) / len(firsts)
    r["mixed_any"] = sum(distill.language_share(distill.reasoning_text(s["completion"])) < 0.99
                         for s in res["samples"]) / len(res["samples"])
    return r

rows = {"base": row(base)}
print(json.dumps(rows["base"]), flush=True)
zero, summ = r1.rl_stage("r1-zero", r1.recipe(cfg, "r1-zero"), tok, copy.deepcopy(base), device, print, key="r1-zero")
rows["R1-Zero"] = row(zero)
rows["seconds"] = time.time() - t0
print(json.dumps(rows, indent=1))
json.dump(rows, open(f"{out}/mixed_measure.json", "w"), indent=1)
