"""Carry the unfinished runs of a study across machines that keep nothing but the repository.

`make reproduce` resumes every run from OUT/ckpt (train.ckpt_every), but OUT lives under the git-ignored runs/.
When the machine is replaced between working sessions, a 20k-step run that is longer than one session would
start over each time. `save` copies each unfinished run's newest checkpoint and its history.jsonl into
carry/<study>/<run>/ (committed); `restore` puts them back into a worktree's runs/study/<study>/<run>/, where
`reproduce` resumes them exactly (the checkpoint holds model, optimiser, scheduler, pixel memory and RNG state).

    python scripts/study_carry.py save    --root /work/study --study long   # before the machine goes
    python scripts/study_carry.py restore --root /work/study --study long   # on the next one, then reproduce

`save` also drops carried copies of runs that have finished since (OUT/model.pt exists), so carry/ holds only
what is still in flight. A checkpoint is ~51 MB for shapes_long_iuq (fp32 model, AdamW moments, pixel memory).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from iuq_lite.checkpoint import latest_checkpoint

CARRY = Path(__file__).resolve().parents[1] / "carry"


def _copy_run(ckpt: Path, history: Path, dst: Path) -> None:
    """ckpt -> dst/ckpt/<its name>, and history.jsonl beside it when there is one."""
    (dst / "ckpt").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, dst / "ckpt" / ckpt.name)
    if history.exists():
        shutil.copy2(history, dst / "history.jsonl")


def save(root: Path, study: str, carry: Path = CARRY) -> list[str]:
    """Copy every unfinished run's newest checkpoint + history into carry/<study>/; returns what was carried."""
    runs, dest, carried = root / "runs" / "study" / study, carry / study, []
    for run in sorted(p for p in runs.glob("*") if p.is_dir()):
        newest = latest_checkpoint(run)
        shutil.rmtree(dest / run.name, ignore_errors=True)         # an older carry, or a run finished since
        if (run / "model.pt").exists() or newest is None:
            continue
        _copy_run(newest, run / "history.jsonl", dest / run.name)
        carried.append(f"{run.name}/{newest.name}")
    return carried


def restore(root: Path, study: str, carry: Path = CARRY) -> list[str]:
    """Put carried runs back under root/runs/study/<study>/ unless root already holds a newer checkpoint."""
    runs, restored = root / "runs" / "study" / study, []
    for src in sorted(p for p in (carry / study).glob("*") if p.is_dir()):
        ckpt, here = latest_checkpoint(src), latest_checkpoint(runs / src.name)
        if ckpt is None or (runs / src.name / "model.pt").exists() or (here is not None and here.name >= ckpt.name):
            continue
        _copy_run(ckpt, src / "history.jsonl", runs / src.name)
        restored.append(f"{src.name}/{ckpt.name}")
    return restored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("save", "restore"))
    ap.add_argument("--root", type=Path, required=True, help="the worktree the study runs in")
    ap.add_argument("--study", default="long")
    ap.add_argument("--carry", type=Path, default=CARRY)
    args = ap.parse_args(argv)
    done = (save if args.action == "save" else restore)(args.root.resolve(), args.study, args.carry)
    print(f"{args.action}: {', '.join(done) if done else 'nothing'}")


if __name__ == "__main__":
    main()
