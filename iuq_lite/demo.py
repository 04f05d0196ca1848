"""`make demo`: generate the embedded data, train the baseline and full IUQ on a short schedule, evaluate both and
print them beside the committed `make reproduce` means. A short run's delta is within seed noise: the printed
table says so and claims nothing from it.

    python -m iuq_lite.demo [--iters N]          # ~9 min on 2 cores (N = 400, or $IUQ_DEMO_ITERS)
        -> last stdout line: JSON {"data", "demo", "seconds"}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import from_preset
from .data import shapes
from .studies import METRIC_COLS, ROOT, markdown_table
from .train import train


def demo(iters: int | None = None) -> dict:
    """Generate the embedded data, print its statistics, train baseline and IUQ briefly, print both."""
    cfg = from_preset("shapes")
    t0 = time.time()
    paths = shapes.ensure_from_config(cfg.data)
    print(f"[demo] embedded dataset ready in {time.time() - t0:.1f} s: {paths['root']}", file=sys.stderr)
    stats = {s: shapes.stats(paths[f"{s}_ann"]) for s in ("train", "val")}
    print(json.dumps(stats, indent=1), file=sys.stderr)
    iters = iters or int(os.environ.get("IUQ_DEMO_ITERS", 400))
    metrics = {}
    for preset in ("shapes", "shapes_iuq"):
        cfg = from_preset(preset, {"train.iters": iters})
        print(f"[demo] training {preset} for {iters} steps", file=sys.stderr)
        res = train(cfg, out=ROOT / "runs" / "demo" / preset, overrides={"train.iters": iters})
        metrics[preset] = {"metrics": res.metrics, "seconds": round(res.seconds, 1)}
    print("\n" + demo_table(metrics, iters), file=sys.stderr)
    return {"data": {s: {k: v for k, v in st.items() if k in ("images", "instances")} for s, st in stats.items()},
            "demo": metrics, "seconds": round(time.time() - t0, 1)}


def demo_table(metrics: dict, iters: int) -> str:
    lines = [f"Short demo schedule ({iters} steps; one seed — its delta is within seed noise, claim nothing):",
             "| run | " + " | ".join(c.split('/')[1] for c in METRIC_COLS) + " | seconds |",
             "|" + "---|" * (len(METRIC_COLS) + 2)]
    for name, m in metrics.items():
        vals = [f"{m['metrics'].get(c):.1f}" if m["metrics"].get(c) is not None else "–" for c in METRIC_COLS]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {m['seconds']} |")
    lines += ["", "Committed `make reproduce` results (mean ± sd over seeds, full schedule):", markdown_table("main")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m iuq_lite.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=None, help="steps per run (default 400 or $IUQ_DEMO_ITERS)")
    print(json.dumps(demo(ap.parse_args(argv).iters)))


if __name__ == "__main__":
    main()
