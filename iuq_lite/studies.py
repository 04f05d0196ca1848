"""The reproduction studies as data: what each runs (STUDIES), what it recorded (results/<study>.json, read
and appended under a lock) and the tables and statistics made from the records (README blocks, paired
per-seed deltas with their t confidence interval). Running the studies is experiments.py.

    python -m iuq_lite.experiments table                # README results tables from results/*.json
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import re
import statistics
from pathlib import Path

from . import utils

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SEEDS = (0, 1, 2)
# Every study run: one thread (two runs share the 2 cores without thrashing) and a learning curve on 250 val
# images every 500 steps (evaluation runs under a forked RNG, so it does not change training).
STUDY_SETTINGS = {"train.threads": 1, "train.eval_every": 500, "train.eval_images": 250}
# The converged study keeps its presets' own curve cadence (250 val images every 2,000 steps).
SETTINGS = {"long": {"train.threads": 1}}

# experiment -> list of (row name, preset, overrides, seeds). Rows differ from the baseline in one thing.
_AUG = {"iuq.equi.enabled": True, "iuq.equi.as_augmentation": True}
STUDIES: dict[str, list[tuple[str, str, dict, tuple]]] = {
    "main": [
        ("baseline", "shapes", {}, SEEDS),
        ("flip+crop as augmentation", "shapes", _AUG, SEEDS),
        ("inter-scene only", "shapes", {"iuq.inter.enabled": True}, SEEDS),
        ("equivariance only", "shapes", {"iuq.equi.enabled": True}, SEEDS),
        ("full IUQ", "shapes_iuq", {}, SEEDS),
        # the first choice for Eq. 8 (METHOD §4 step 5: no class loss), kept as measured (one seed)
        ("full IUQ, Eq. 8 mask loss only", "shapes_iuq", {"iuq.equi.class_loss": False}, (0,)),
        # investigation: the equivariance branch trails the baseline at lambda = 3; is lambda the cause?
        ("full IUQ, lambda 1", "shapes_iuq", {"iuq.equi.weight": 1.0}, (0,)),
    ],
    "equivariance": [   # Table S3 analog: transform family x {augmentation, equivariance}; L_equi only.
        # flip+crop is the default family: those two rows have main's overrides, so main's seed-0 runs are reused.
        *[(f"{name} as {mode}", "shapes",
           {**(_AUG if mode == "augmentation" else {"iuq.equi.enabled": True}),
            **({"iuq.equi.kinds": list(kinds)} if len(kinds) > 2 else {})}, (0,))
          for name, kinds in [("flip+crop", ("hflip", "crop")), ("+rotation", ("hflip", "crop", "rotate")),
                              ("+scaling", ("hflip", "crop", "scale")),
                              ("+rotation+scaling", ("hflip", "crop", "rotate", "scale"))]
          for mode in ("augmentation", "equivariance")],
        # investigation: the equivariance rows trail the augmentation rows; which transform does the harm?
        *[(f"{k} only as equivariance", "shapes", {"iuq.equi.enabled": True, "iuq.equi.kinds": [k]}, (0,))
          for k in ("hflip", "crop")],
    ],
    "capacity": [       # Table S4 analog: inter-scene loss with memory capacities (pixels)
        ("none", "shapes", {}, (0,)),
        ("mini-batch only", "shapes", {"iuq.inter.enabled": True, "iuq.inter.capacity": 0}, (0,)),
        # 20k is the shapes default: that row has main's "inter-scene only" overrides and reuses its seed-0 run
        *[(f"{c // 1000}k px", "shapes", {"iuq.inter.enabled": True, **({"iuq.inter.capacity": c} if c != 20_000
                                                                        else {})}, (0,))
          for c in (5_000, 20_000, 50_000)],
    ],
    "schedule": [       # investigation: IUQ trails the baseline at 1,500 steps; does a longer schedule close it?
        ("baseline, 3000 steps", "shapes", {"train.iters": 3000}, (0,)),
        ("full IUQ, 3000 steps", "shapes_iuq", {"train.iters": 3000}, (0,)),
    ],
    "condinst": [       # the same IUQ through the generic adapter on a CondInst-style model (Tables S3/S4's base)
        ("baseline", "shapes_condinst", {}, SEEDS),
        ("full IUQ", "shapes_condinst_iuq", {}, SEEDS),
        # one seed each: which of the two terms moves CondInst's AP, and the flip+crop augmentation control
        ("flip+crop as augmentation", "shapes_condinst", _AUG, (0,)),
        ("inter-scene only", "shapes_condinst", {"iuq.inter.enabled": True}, (0,)),
        ("equivariance only", "shapes_condinst", {"iuq.equi.enabled": True}, (0,)),
    ],
}
# The study at convergence (issue 15): shapes_long = flip + scale-jitter augmentation, 128-px crop, a schedule
# chosen on the dev split. 5 seeds for the decisive pair first (10 if the CI stays undecided), 3 per single term.
LONG_SEEDS = (0, 1, 2, 3, 4)
STUDIES["long"] = [
    ("baseline", "shapes_long", {}, LONG_SEEDS),
    ("full IUQ", "shapes_long_iuq", {}, LONG_SEEDS),
    ("inter-scene only", "shapes_long", {"iuq.inter.enabled": True}, (0, 1, 2)),
    ("equivariance only", "shapes_long", {"iuq.equi.enabled": True}, (0, 1, 2)),
    # only if full IUQ still trails the baseline: the two weakest points of our reconstruction (METHOD marks
    # both as our choices), run after the rows above (reproduce --rows NAME to pick)
    ("full IUQ, Eq. 8 with g(F) detached", "shapes_long_iuq", {"iuq.equi.detach_features": True}, (0, 1, 2)),
    ("full IUQ, Eq. 5 over matched queries", "shapes_long_iuq", {"iuq.inter.queries": "matched"}, (0, 1, 2)),
]
# Choosing the converged schedule on the dev split (its own generator stream; never val): the preset's length
# and twice it (the test of convergence: doubling should gain < 1.5 AP). Curves: 250 dev images.
STUDIES["dev"] = [(f"{n // 1000}k steps (dev split)", "shapes_long", {"data.val_split": "dev", "train.iters": n}, (0,))
                  for n in (10_000, 20_000, 40_000)]
SETTINGS["dev"] = {"train.threads": 1}
# Doubling 20k steps gains ~7 AP on the dev split, so 20k is not converged by the test; the 5-seed study
# stays at the length the machine affords, and this seed-0 pair on val asks whether the gap changes at 40k.
STUDIES["long40k"] = [("baseline, 40k steps", "shapes_long", {"train.iters": 40_000}, (0,)),
                      ("full IUQ, 40k steps", "shapes_long_iuq", {"train.iters": 40_000}, (0,))]
SETTINGS["long40k"] = {"train.threads": 1}
# Run folders whose weights the notebooks and figures load (fp16, <= 10 MB): checkpoints/<preset>_s<seed>/
KEEP = {("main", "baseline", 0): "shapes_s0", ("main", "full IUQ", 0): "shapes_iuq_s0",
        ("condinst", "baseline", 0): "shapes_condinst_s0", ("condinst", "full IUQ", 0): "shapes_condinst_iuq_s0",
        ("long", "baseline", 0): "shapes_long_s0", ("long", "full IUQ", 0): "shapes_long_iuq_s0"}


def run_key(preset: str, seed: int, overrides: dict) -> str:
    return json.dumps([preset, seed, overrides], sort_keys=True)


def record_key(rec: dict) -> str:
    """run_key of a results/*.json run record."""
    return run_key(rec["preset"], rec["seed"], rec["overrides"])


def row_runs(runs: list[dict], preset: str, overrides: dict) -> list[dict]:
    """The run records of one study row (every seed): same preset and overrides."""
    return [r for r in runs if r["preset"] == preset and r["overrides"] == overrides]


def load_results(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else \
        {"command": f"python -m iuq_lite.experiments reproduce --only {name}", "commit": None, "runs": []}


# --------------------------------------------------------------------------------------------- records
def recorded_elsewhere(name: str, preset: str, seed: int, over: dict) -> dict | None:
    """The record of this exact run in another study's results (e.g. Table S4's "none" = main's baseline)."""
    key = run_key(preset, seed, over)
    for other in STUDIES:
        for r in load_results(other)["runs"] if other != name else []:
            if record_key(r) == key:
                return {**r, "reused_from": f"results/{other}.json"}
    return None


@contextlib.contextmanager
def locked(name: str):
    """An exclusive lock on results/<name>.json for a read-modify-write: several `reproduce` / `recheck`
    processes may finish at once."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def append_run(name: str, rec: dict, *, commit: bool = True) -> bool:
    """Append a run record to results/<name>.json unless its run is already there (False then), under
    locked(name)."""
    with locked(name):
        res = load_results(name)
        if record_key(rec) in {record_key(r) for r in res["runs"]}:
            return False
        res["runs"].append(rec)
        if commit:
            res["commit"] = utils.git_commit()
        utils.write_json(res, RESULTS / f"{name}.json")
    return True


# ----------------------------------------------------------------------------------------------- tables
METRIC_COLS = ("segm/AP", "segm/AP50", "segm/AP75", "segm/APs", "segm/APm")


def summarize(name: str) -> list[dict]:
    """Per row: mean and sd of each metric over seeds, in the order of STUDIES[name]."""
    res = load_results(name)
    out = []
    for row, preset, over, _ in STUDIES[name]:
        runs = row_runs(res["runs"], preset, over)
        if not runs:
            continue
        keys = sorted({k for r in runs for k, v in r["metrics"].items() if v is not None})
        agg = {}
        for k in keys:
            vals = [r["metrics"][k] for r in runs if r["metrics"].get(k) is not None]
            agg[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        steps, peaks = ([r[k] for r in runs if r.get(k)] for k in ("step_s", "peak_mb"))
        out.append({"row": row, "n": len(runs), "metrics": agg, "seeds": sorted(r["seed"] for r in runs),
                    "step_s": statistics.mean(steps) if steps else None, "peak_mb": max(peaks) if peaks else None})
    return out


def table_matches_runs(name: str) -> bool:
    """Each row's AP in markdown_table(name), recomputed from the raw runs in results/<name>.json (notebooks 03, 04)."""
    runs, studies = load_results(name)["runs"], {r: (p, o) for r, p, o, _ in STUDIES[name]}
    lines = markdown_table(name).splitlines()[2:]                   # the table's rows, after header and rule
    return all(line.split(" | ")[2].startswith(f"{statistics.mean(aps):.1f}")            # column 3 = AP
               for r, line in zip(summarize(name), lines)
               for aps in [[x["metrics"]["segm/AP"] for x in row_runs(runs, *studies[r["row"]])]])


def paired_deltas(name: str, metric: str = "segm/AP") -> dict[str, dict[int, float]]:
    """{row: {seed: metric(row, seed) - metric(first row, seed)}} over the seeds both rows have: the per-seed
    (paired) differences to the study's first row (its baseline), which share initialisation and data order."""
    runs, study = load_results(name)["runs"], STUDIES[name]
    per = {row: {r["seed"]: r["metrics"][metric] for r in row_runs(runs, p, o)} for row, p, o, _ in study}
    ref = per[study[0][0]]
    return {row: {s: v - ref[s] for s, v in sorted(vals.items()) if s in ref} for row, vals in per.items()
            if row != study[0][0] and vals}


def paired_ci(deltas: list[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of paired per-seed differences with its two-sided t confidence interval (n - 1 degrees of
    freedom): {"n", "mean", "sd", "lo", "hi"}; lo / hi are None for fewer than two pairs."""
    from scipy.stats import t as student_t  # here: scipy.stats takes ~0.5 s to import, for one README line
    n = len(deltas)
    if n == 0:
        raise ValueError("paired_ci needs at least one paired difference")
    mean = statistics.mean(deltas)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * (sd := statistics.stdev(deltas)) / n ** 0.5
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def gain_summary(name: str, metric: str = "segm/AP", min_pairs: int = 1) -> str:
    """One markdown line per row of study `name` with at least `min_pairs` seeds paired with its first row: the
    mean paired difference with its 95 % CI."""
    lines = []
    for row, d in {r: d for r, d in paired_deltas(name, metric).items() if len(d) >= max(min_pairs, 1)}.items():
        ci = paired_ci(list(d.values()))
        span = f"95 % CI [{ci['lo']:+.1f}, {ci['hi']:+.1f}]" if ci["lo"] is not None else "one pair, no CI"
        lines.append(f"- {row} − {STUDIES[name][0][0]}: mean paired ΔAP {ci['mean']:+.1f} over {ci['n']} seed"
                     f"{'s' if ci['n'] > 1 else ''}, {span}")
    return "\n".join(lines)


def markdown_table(name: str) -> str:
    rows = summarize(name)
    if not rows:
        return f"*(no results yet for `{name}`: run `make reproduce`)*"
    groups = sorted({k.split("@")[1] for r in rows for k in r["metrics"] if "@" in k})
    deltas = paired_deltas(name)
    head = ["row", "seeds", *[c.split("/")[1] for c in METRIC_COLS], *[f"AP@{g}" for g in groups],
            "step s", "peak MB", f"ΔAP vs {STUDIES[name][0][0]} per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def fmt(k: str) -> str:
            if k not in r["metrics"]:
                return "–"
            m, s = r["metrics"][k]
            return f"{m:.1f} ± {s:.1f}" if r["n"] > 1 else f"{m:.1f}"
        cells = [r["row"], str(r["n"]), *[fmt(c) for c in METRIC_COLS], *[fmt(f"segm/AP@{g}") for g in groups],
                 f"{r['step_s']:.3f}" if r["step_s"] else "–", f"{r['peak_mb']:.0f}" if r["peak_mb"] else "–",
                 ", ".join(f"{d:+.1f} (s{sd})" for sd, d in deltas.get(r["row"], {}).items()) or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(name: str) -> str:
    gains = f"\n\n{g}" if (g := gain_summary(name, min_pairs=2)) else ""     # one pair: the table says it all
    return f"<!-- results:{name} -->\n{markdown_table(name)}{gains}\n<!-- /results:{name} -->"


def update_readme(path: Path = ROOT / "README.md") -> bool:
    """Rewrite the README's generated results blocks from results/*.json; True when something changed."""
    text = new = path.read_text()
    for name in STUDIES:
        new = re.sub(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", lambda _m: readme_block(name), new,
                     flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text
