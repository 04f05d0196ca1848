"""Running the reproduction studies (`make reproduce`) of studies.STUDIES, and what is measured on their runs:
diagnostics, committed checkpoints, rechecks, learning-curve figures (`make demo` is demo.py).

    python -m iuq_lite.experiments reproduce [--only main] [--seeds 0 1 2]
    python -m iuq_lite.experiments table                # README results tables from results/*.json
    python -m iuq_lite.experiments recheck long baseline 0   # retrain a recorded run: AP within 0.1?
    python -m iuq_lite.experiments curves               # figures/learning_curves.png from results/long*.json, dev
    python -m iuq_lite.experiments retime long --runs /work/study/runs/study   # minutes of old resumed runs

`reproduce` is resumable: every run is one subprocess (`python -m iuq_lite.train`), its result is appended to
`results/<experiment>.json` as soon as it ends, and runs already recorded there are skipped — so the study can
be spread over several sessions. Timing figures (step_s) are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from . import studies, utils, viz
from .analysis import equivariance_errors, gradient_alignment, query_uniqueness
from .checkpoint import load_checkpoint, load_model
from .config import apply_overrides, from_dict, from_preset
from .data.coco import build_datasets
from .evaluate import evaluate
from .model import build_model
from .studies import (KEEP, ROOT, SETTINGS, STUDY_SETTINGS, markdown_table, record_key, row_runs, run_key,
                      update_readme)
from .train import elapsed_seconds

CHECKPOINTS = ROOT / "checkpoints"


def run_one(preset: str, seed: int, overrides: dict, out: Path, *, extra: dict | None = None) -> dict:
    """Train one run in a fresh subprocess; returns its record (metrics, step_s, peak_mb, seconds). A run
    folder that already holds a finished run of this configuration is recorded as it is (not retrained)."""
    sets = {**overrides, **(extra or {}), "train.seed": seed}
    if (out / "manifest.json").exists():
        manifest = json.loads((out / "manifest.json").read_text())
        # (from_dict: options added since the run take their defaults, which the run had)
        if from_dict(manifest["config"]) == from_preset(preset, sets):
            return _record(out, preset, seed, overrides, manifest["metrics"])
    cmd = [sys.executable, "-m", "iuq_lite.train", "--preset", preset, "--out", str(out), "--resume",
           "--no-progress"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v!r}")]
    print(f"[reproduce] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}")
    return _record(out, preset, seed, overrides, json.loads(stdout.strip().splitlines()[-1])["metrics"])


def _record(out: Path, preset: str, seed: int, overrides: dict, metrics: dict) -> dict:
    """The results/*.json record of the finished run in `out`: its training time in seconds (across resumes,
    train.elapsed_seconds), its learning curve (the intermediate evaluations on eval_images val images, then
    the final one on all), the median step time."""
    manifest = json.loads((out / "manifest.json").read_text())
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    *elapsed, total = elapsed_seconds([*hist, {"seconds": manifest["seconds"]}])
    rates = [h["it_s"] for h in hist if "it_s" in h][1:]   # the first interval includes start-up
    curve = [{"step": h["step"], "minutes": round(e / 60, 2), "AP": h["segm/AP"]} for h, e in zip(hist, elapsed)
             if "segm/AP" in h] + [{"step": manifest["iters"], "minutes": round(total / 60, 2),
                                    "AP": metrics.get("segm/AP"), "final": True}]
    return {"preset": preset, "seed": seed, "overrides": overrides, "metrics": metrics,
            "step_s": round(1 / statistics.median(rates), 4) if rates else None,
            "peak_mb": manifest.get("peak_mb"), "seconds": round(total, 1),
            "commit": manifest.get("commit"), "dirty": manifest.get("dirty"), "curve": curve}


def retime(name: str, runs: Path = ROOT / "runs" / "study") -> list[str]:
    """Re-derive "seconds" and the curve's minutes of study `name`'s recorded runs whose run folder
    (runs/<name>/<row>_s<seed>) shows a clock restart: runs resumed at revisions whose checkpoints did not
    carry the clock recorded the last process's time only. Returns the rows (row, seed) changed."""
    changed = []
    with studies.locked(name):
        res = studies.load_results(name)
        for r in res["runs"]:
            out = runs / name / f"{_slug(r['row'])}_s{r['seed']}"
            new = None if "reused_from" in r or not out.is_dir() else _record(out, "", 0, {}, r["metrics"])
            if new and new["seconds"] > json.loads((out / "manifest.json").read_text())["seconds"] + 1:  # restarted
                r.update(seconds=new["seconds"], curve=new["curve"])
                changed.append(f"{r['row']} s{r['seed']}")
        utils.write_json(res, studies.RESULTS / f"{name}.json")
    return changed


def keep_checkpoint(run_dir: Path, name: str, *, threads: int = 2) -> dict:
    """Copy a run's weights as fp16 (<= 10 MB) into checkpoints/<name>/ with its manifest, whose "metrics" are
    re-measured on the fp16 weights (the training-time fp32 figures stay as "metrics_fp32"), so that
    re-evaluating the committed file reproduces them (tests/test_checkpoints.py, |dAP| <= 0.1). Query
    uniqueness (dot-product mask embeddings) is recorded for Mask2Former-style models only."""
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    dst = CHECKPOINTS / name
    utils.atomic_save(state, dst / "model.pt")
    torch.set_num_threads(threads)
    model, cfg = load_model(dst / "model.pt")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["metrics_fp32"] = manifest["metrics"]
    manifest["metrics"] = evaluate(model, build_datasets(cfg.data)[1], topk=cfg.model.test_topk)
    manifest["model_sha256"] = utils.sha256_file(dst / "model.pt")
    manifest["eval_threads"] = threads
    utils.write_json(manifest, dst / "manifest.json")
    return record_uniqueness(name) if cfg.model.name != "condinst" else manifest


UNIQUENESS = {"num_images": 50, "threshold": 0.5, "seed": 0}   # notebook 02 re-measures with these


def record_uniqueness(name: str) -> dict:
    """Add the query-uniqueness figures of checkpoints/<name> (analysis.query_uniqueness with UNIQUENESS) to
    its manifest, so notebook 02 can check that the committed weights reproduce them."""
    model, cfg, manifest = load_checkpoint(CHECKPOINTS / name / "model.pt")
    u = query_uniqueness(model, build_datasets(cfg.data)[1], **UNIQUENESS)
    manifest["query_uniqueness"] = {**{k: v for k, v in u.items() if not torch.is_tensor(v)}, **UNIQUENESS}
    utils.write_json(manifest, CHECKPOINTS / name / "manifest.json")
    return manifest


def diagnose(name: str = "main", runs: Path = ROOT / "runs" / "study") -> dict:
    """Mechanism figures for every finished run of study `name` (runs/<name>/*/model.pt): the query
    uniqueness (analysis.query_uniqueness with UNIQUENESS) and the feature equivariance error ||f(g(I)) -
    g(f(I))|| / ||g(f(I))|| for hflip and crop (analysis.equivariance_errors, 64 val images, seed 0), written to
    results/<name>_diagnostics.json. They say whether each loss does what it claims, whatever the AP does.
    Runs recorded there before whose folders are gone (a machine replaced between sessions) keep their entry,
    each entry with the revision it was measured at."""
    rows = {run_key(p, s, o): r for r, p, o, seeds in studies.STUDIES[name] for s in seeds}
    dst, commit = studies.RESULTS / f"{name}_diagnostics.json", utils.git_commit()   # one revision for all
    old = json.loads(dst.read_text()) if dst.exists() else {"runs": []}
    out = {(r["row"], r["seed"]): {"commit": old.get("commit"), **r} for r in old["runs"]}   # re-measured: replaced
    for path in sorted((runs / name).glob("*/model.pt")):
        man = json.loads((path.parent / "manifest.json").read_text())
        over = {k: v for k, v in man["overrides"].items()
                if k not in SETTINGS.get(name, STUDY_SETTINGS) and k != "train.seed"}
        row = rows.get(run_key(man["preset"], man["seed"], over), path.parent.name)
        model, cfg = load_model(path)
        val = build_datasets(cfg.data)[1]
        u = query_uniqueness(model, val, **UNIQUENESS)
        out[(row, man["seed"])] = {
            "row": row, "seed": man["seed"], "segm/AP": man["metrics"]["segm/AP"], "commit": commit,
            **{k: u[k] for k in ("cross_fire", "cross_fire_same_class", "cross_fire_other_class", "own_fire")},
            "equivariance_error": equivariance_errors(model, val, kinds=("hflip", "crop"), num_images=64)}
    res = {"command": f"python -m iuq_lite.experiments diagnose {name}", "uniqueness": UNIQUENESS,
           "runs": list(out.values())}
    utils.write_json(res, dst)
    return res


def gradients(names: tuple[str, ...] = ("main", "long"), *, num_batches: int = 16, warmup: int = 40) -> dict:
    """analysis.gradient_alignment of each study's committed seed-0 pair (KEEP) and, for the last study, of its
    IUQ preset's untrained model: the IUQ preset's criterion (both terms on) on its training stream (seed 0,
    the same batches for every model), written to results/gradients.json; the last study's pair also with
    Eq. 8's g(F) detached (its investigation row), so the part of Eq. 8's gradient through g(F) shows. Does a
    step on Eq. 5 / Eq. 8 also descend the instance losses (cos > 0) or undo part of it (cos < 0), early,
    short-trained and converged?"""
    loaded = {(n, r): load_checkpoint(CHECKPOINTS / KEEP[(n, r, 0)] / "model.pt")[:2] for n in names
              for r in ("baseline", "full IUQ")}
    pairs, cfgs = {k: m for k, (m, _) in loaded.items()}, {n: loaded[(n, "full IUQ")][1] for n in names}
    utils.seed_everything(0)
    pairs[(names[-1], "untrained")] = build_model(cfgs[names[-1]])
    # both models of a study meet the same terms and batches: its IUQ checkpoint's config
    jobs = {f"{n}: {r}": (model, cfgs[n]) for (n, r), model in pairs.items()}
    # the investigation row "Eq. 8 with g(F) detached": how much of Eq. 8's pull reaches f through g(F)?
    det = apply_overrides(cfgs[names[-1]], {"iuq.equi.detach_features": True})
    jobs |= {f"{names[-1]}: {r}, g(F) detached": (pairs[(names[-1], r)], det)
             for r in ("baseline", "full IUQ")}
    out = {k: gradient_alignment(m, c, num_batches=num_batches, warmup=warmup) for k, (m, c) in jobs.items()}
    res = {"command": "python -m iuq_lite.experiments gradients", "commit": utils.git_commit(),
           "checkpoints": {f"{n}: {r}": KEEP[(n, r, 0)] for n, r in pairs if r != "untrained"}, "models": out}
    utils.write_json(res, studies.RESULTS / "gradients.json")
    return res


def _slug(row: str) -> str:
    """A row's run-folder name (before _s<seed>): "full IUQ, 40k steps" -> "full_IUQ__40k_steps"."""
    return "".join(ch if ch.isalnum() else "_" for ch in row).strip("_")


def reproduce(only: list[str] | None = None, seeds: list[int] | None = None, rows: list[str] | None = None) -> dict:
    """Run every missing (experiment, row, seed); several processes may run this at once (per-run locks)."""
    done: dict[str, int] = {}
    for name in studies.STUDIES:
        if only and name not in only:
            continue
        have = {record_key(r) for r in studies.load_results(name)["runs"]}
        for row, preset, over, row_seeds in studies.STUDIES[name]:
            for seed in row_seeds:
                if (seeds is not None and seed not in seeds) or (rows and row not in rows):
                    continue
                if run_key(preset, seed, over) in have:
                    continue
                if (rec := studies.recorded_elsewhere(name, preset, seed, over)) is not None:   # same run, another study
                    studies.append_run(name, {**rec, "row": row}, commit=False)
                    continue
                out = ROOT / "runs" / "study" / name / f"{_slug(row)}_s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                lock = open(out / ".lock", "w")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:      # another `reproduce` process is running it
                    continue
                rec = {"row": row, **run_one(preset, seed, over, out, extra=SETTINGS.get(name, STUDY_SETTINGS))}
                if not studies.append_run(name, rec):
                    continue                 # finished meanwhile by another process
                if (name, row, seed) in KEEP:
                    keep_checkpoint(out, KEEP[(name, row, seed)])
                lock.close()
                done[name] = done.get(name, 0) + 1
    return {"new_runs": done}


def recheck(name: str, row: str, seed: int) -> dict:
    """Retrain one recorded run of study `name` at this revision (runs/recheck/...) and compare its mask AP
    with the record: results match code when |delta| <= 0.1 (same machine type, one thread). The comparison
    is appended to results/recheck.json."""
    (preset, over), = [(p, o) for r, p, o, _ in studies.STUDIES[name] if r == row]
    recorded, = [r for r in row_runs(studies.load_results(name)["runs"], preset, over) if r["seed"] == seed]
    out = ROOT / "runs" / "recheck" / name / f"{_slug(row)}_s{seed}"
    rec = run_one(preset, seed, over, out, extra=SETTINGS.get(name, STUDY_SETTINGS))
    delta = rec["metrics"]["segm/AP"] - recorded["metrics"]["segm/AP"]
    check = {"study": name, "row": row, "seed": seed, "recorded_commit": recorded.get("commit"),
             "commit": rec["commit"], "recorded_AP": recorded["metrics"]["segm/AP"],
             "retrained_AP": rec["metrics"]["segm/AP"], "delta": round(delta, 2), "ok": abs(delta) <= 0.1,
             "seconds": rec["seconds"]}
    with studies.locked("recheck"):
        path = studies.RESULTS / "recheck.json"
        checks = json.loads(path.read_text())["checks"] if path.exists() else []
        utils.write_json({"checks": checks + [check]}, path)
    return check


def plot_curves(out: Path = ROOT / "figures" / "learning_curves.png",
                names: tuple[str, ...] = ("long", "long40k", "dev"), seed: int = 0) -> Path:
    """The recorded learning curves (mask AP vs steps and vs minutes) of every `seed` run of the studies
    `names`, one line per run, as in notebook 05 (viz.show_learning_curves); written as a PNG."""
    curves = {r["row"] if name == "dev" else f"{name}: {r['row']} (val)": r["curve"] for name in names
              for r in studies.load_results(name)["runs"] if r["seed"] == seed and "curve" in r}   # dev rows name their split
    if not curves:
        raise FileNotFoundError(f"no recorded seed-{seed} learning curves in results/{{{','.join(names)}}}.json")
    return viz.save_figure(viz.show_learning_curves(curves, title=f"learning curves, seed {seed}: 250 images every "
                                                    "2,000 steps (open), the whole split (filled)"), out)


def _tables() -> dict:
    out = {name: markdown_table(name) for name in studies.STUDIES}
    print("".join(f"### {name}\n{table}\n\n" for name, table in out.items()), end="", file=sys.stderr)
    return {**out, "readme_changed": update_readme()}


def main(argv: list[str] | None = None) -> None:
    many, runs = {"nargs": "*", "default": None}, {"--runs": {"type": Path, "default": ROOT / "runs" / "study"}}
    # command: (help, its arguments {name: add_argument options}, what it prints)
    commands: dict[str, tuple[str, dict[str, dict], Callable[[argparse.Namespace], Any]]] = {
        "reproduce": ("run the studies' missing runs", {"--only": {**many, "choices": list(studies.STUDIES)},
                      "--seeds": {**many, "type": int}, "--rows": {**many, "help": "only these row names"}},
                      lambda a: reproduce(a.only, a.seeds, a.rows)),
        "keep": ("(re)export a finished study run as a committed fp16 checkpoint", {"run_dir": {}, "name": {}},
                 lambda a: {"metrics": keep_checkpoint(Path(a.run_dir), a.name)["metrics"]}),
        "uniqueness": ("record a committed checkpoint's query uniqueness in its manifest", {"names": {"nargs": "+"}},
                       lambda a: {n: record_uniqueness(n)["query_uniqueness"] for n in a.names}),
        "diagnose": ("uniqueness + equivariance error of every finished run of a study",
                     {"name": {"nargs": "?", "default": "main"}, **runs},
                     lambda a: {"runs": len(diagnose(a.name, a.runs)["runs"])}),
        "recheck": ("retrain one recorded run and compare its AP (results match code)",
                    {"name": {}, "row": {}, "seed": {"type": int}}, lambda a: recheck(a.name, a.row, a.seed)),
        "retime": ("re-derive the seconds / curve minutes of recorded runs resumed by old revisions",
                   {"name": {}, **runs},
                   lambda a: {"retimed": retime(a.name, a.runs)}),
        "gradients": ("how the IUQ terms' gradients align with the instance losses' (committed pairs)",
                      {"names": {"nargs": "*", "default": ["main", "long"]}},
                      lambda a: {k: m["all"]["cos"] for k, m in gradients(tuple(a.names))["models"].items()}),
        "table": ("print the results tables and rewrite the README's generated blocks", {}, lambda a: _tables()),
        "curves": ("figures/learning_curves.png: the recorded seed-0 curves of long, long40k, dev", {},
                   lambda a: {"figure": str(plot_curves())}),
    }
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, (text, arguments, _) in commands.items():
        p = sub.add_parser(cmd, help=text)
        for name, options in arguments.items():
            p.add_argument(name, **options)
    args = ap.parse_args(argv)
    print(json.dumps(commands[args.cmd][2](args)))


if __name__ == "__main__":
    main()
