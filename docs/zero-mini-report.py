"""The zero-mini acceptance table and plot from finished runs' metrics.jsonl (one JSON line per RL step and eval).

Usage (from the repository root):
    python docs/zero-mini-report.py OUT.png SEED0_DIR [SEED1_DIR ...] [--control NAME=DIR ...]
Prints, per run, step 0 vs the last evaluation against each bar of the zero-mini issue, the step-0 forced-mode
probe, and the controls' first and last evaluations; draws length per bucket, the L and LV shares per bucket and
the reflective-word rate over the steps (one column per seed)."""
import json
import os
import sys

BUCKETS = ["E", "M", "H", "VH"]


def evals(run: str) -> list[dict]:
    return [e for e in map(json.loads, open(f"{run}/metrics.jsonl")) if e["kind"] == "eval"]


def hv(e: dict, key: str) -> float:  # H and VH pooled (equal problem counts)
    return (e[f"{key}/H"] + e[f"{key}/VH"]) / 2


def bars(run: str) -> list[tuple[str, str, str, bool]]:
    """(what, step 0, end, met) for each acceptance bar of the issue."""
    ev = evals(run)
    a, b = ev[0], ev[-1]
    ratio = {k: b[f"length/{k}"] / a[f"length/{k}"] for k in BUCKETS}
    lv_up = all(b.get(f"lv/{k}", 0) > a.get(f"lv/{k}", 0) for k in ("H", "VH"))
    refl = b["reflection"] / max(a["reflection"], 1e-9)
    return [
        ("pass@1 overall (+15 points)", f"{a['pass@1']:.3f}", f"{b['pass@1']:.3f}", b["pass@1"] - a["pass@1"] >= .15),
        ("pass@1 H+VH (+25 points)", f"{hv(a, 'pass@1'):.3f}", f"{hv(b, 'pass@1'):.3f}",
         hv(b, "pass@1") - hv(a, "pass@1") >= .25),
        ("length H, VH (x1.5 each)", f"{a['length/H']:.0f}, {a['length/VH']:.0f}",
         f"{b['length/H']:.0f}, {b['length/VH']:.0f} (x{ratio['H']:.2f}, x{ratio['VH']:.2f})",
         ratio["H"] >= 1.5 and ratio["VH"] >= 1.5),
        ("length E (within x1.3)", f"{a['length/E']:.0f}", f"{b['length/E']:.0f} (x{ratio['E']:.2f})",
         ratio["E"] <= 1.3),
        ("long share H minus E (>= 0.3)", f"{a['long/H'] - a['long/E']:.2f}", f"{b['long/H'] - b['long/E']:.2f}",
         b["long/H"] - b["long/E"] >= 0.3),
        ("reflective words / 100 (x3)", f"{a['reflection']:.2f}", f"{b['reflection']:.2f} (x{refl:.1f})", refl >= 3),
        ("LV share H, VH (rising)", f"{a.get('lv/H', 0):.2f}, {a.get('lv/VH', 0):.2f}",
         f"{b.get('lv/H', 0):.2f}, {b.get('lv/VH', 0):.2f}", lv_up),
        ("cons@4 >= pass@1", f"{a['cons@k']:.3f} vs {a['pass@1']:.3f}", f"{b['cons@k']:.3f} vs {b['pass@1']:.3f}",
         b["cons@k"] >= b["pass@1"]),
        ("format >= 0.95", f"{a['format']:.3f}", f"{b['format']:.3f}", b["format"] >= 0.95),
        ("truncation <= 2%", f"{a['truncated']:.1%}", f"{b['truncated']:.1%}", b["truncated"] <= 0.02),
    ]


def per_bucket(e: dict) -> str:
    cols = []
    for k in ("pass@1", "length", "long", "lv"):
        cols.append(" / ".join(f"{e.get(f'{k}/{b}', float('nan')):.2f}" if k != "length" else
                               f"{e.get(f'{k}/{b}', float('nan')):.0f}" for b in BUCKETS))
    return " | ".join(cols)


def probe(e: dict) -> str:
    """Accuracy per forced mode at the evaluation's temperature (0.6) and, where the run measured it, at the
    rollouts' (1.0), then the mean lengths at 0.6."""
    hot = "forced_L_rollout/E" in e
    head = "| bucket | D acc | L acc | LV acc |" + (" D acc T=1 | L acc T=1 | LV acc T=1 |" if hot else "")
    rows = [head + " D len | L len | LV len |", "|---" * (head.count("|") + 2) + "|"]
    for b in BUCKETS:
        accs = [f"forced_{m}/{b}" for m in "D L LV".split()]
        accs += [f"forced_{m}_rollout/{b}" for m in "D L LV".split()] if hot else []
        rows.append(f"| {b} | " + " | ".join(f"{e[k]:.2f}" for k in accs) + " | "
                    + " | ".join(f"{e[f'forced_{m}_length/{b}']:.0f}" for m in "D L LV".split()) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    out, runs, controls = argv[0], [], {}
    it = iter(argv[1:])
    for a in it:
        if a == "--control":
            name, d = next(it).split("=", 1)
            controls[name] = d
        else:
            runs.append(a)
    for d in runs + list(controls.values()):
        if not os.path.exists(f"{d}/metrics.jsonl"):
            raise SystemExit(f"error: {d} has no metrics.jsonl (give finished run directories)")
    for run in runs:
        ev = evals(run)
        print(f"\n### {run}\n\nstep-0 forced-mode probe:\n\n{probe(ev[0])}\n")
        print("| bar | step 0 | end | met |\n|---|---|---|---|")
        for what, a, b, ok in bars(run):
            print(f"| {what} | {a} | {b} | {'yes' if ok else '**no**'} |")
        print("\n| step | pass@1 E/M/H/VH | length E/M/H/VH | long share E/M/H/VH | LV share E/M/H/VH |")
        print("|---|---|---|---|---|")
        for e in ev:
            print(f"| {e['step']} | {per_bucket(e)} |")
    if controls:
        print("\n| run | step | pass@1 | pass@1 E/M/H/VH | length E/M/H/VH | long share E/M/H/VH | LV share E/M/H/VH "
              "| reflection | length of wrong answers (last train steps) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, d in [("RL (seed 0)", runs[0])] + list(controls.items()):
            ev = evals(d)
            train = [e for e in map(json.loads, open(f"{d}/metrics.jsonl")) if e["kind"] == "train"]
            wrong = [t["length_wrong"] for t in train[-5:] if t.get("length_wrong") == t.get("length_wrong")]
            lw = f"{sum(wrong) / len(wrong):.0f}" if wrong else "-"
            for e in (ev[0], ev[-1]):
                print(f"| {name} | {e['step']} | {e['pass@1']:.3f} | {per_bucket(e)} | {e['reflection']:.2f} | "
                      f"{lw if e is ev[-1] else ''} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(4, len(runs), figsize=(6 * len(runs), 13), squeeze=False)
    for j, run in enumerate(runs):
        ev = evals(run)
        steps = [e["step"] for e in ev]
        for b in BUCKETS:
            axes[0, j].plot(steps, [e[f"length/{b}"] for e in ev], marker="o", label=b)
            axes[1, j].plot(steps, [e.get(f"long/{b}", 0) for e in ev], marker="o", label=f"L or LV, {b}")
            axes[2, j].plot(steps, [e.get(f"lv/{b}", 0) for e in ev], marker="o", label=f"LV, {b}")
        axes[3, j].plot(steps, [e["reflection"] for e in ev], marker="o", color="k")
        for i, title in enumerate(["held-out length (tokens) per bucket", "long-mode share per bucket",
                                   "LV (verify) share per bucket", "reflective words per 100 words"]):
            axes[i, j].set_title(f"{run.rstrip('/').split('/')[-1]}: {title}", fontsize=9)
            axes[i, j].set_xlabel("RL step")
            if i < 3:
                axes[i, j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
