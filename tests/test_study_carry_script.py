"""scripts/study_carry.py: unfinished runs' newest checkpoints go to carry/ and come back; finished runs do not."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "study_carry", Path(__file__).resolve().parents[1] / "scripts" / "study_carry.py")
study_carry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_carry)


def _run(root: Path, name: str, steps: list[int], *, finished: bool = False) -> Path:
    run = root / "runs" / "study" / "long" / name
    (run / "ckpt").mkdir(parents=True)
    for s in steps:
        (run / "ckpt" / f"iter_{s:07d}.pt").write_bytes(f"state {s}".encode())
    (run / "history.jsonl").write_text(f'{{"step": {steps[-1]}}}\n')
    if finished:
        (run / "model.pt").write_bytes(b"final")
    return run


def test_save_carries_only_the_newest_checkpoint_of_unfinished_runs(tmp_path):
    root, carry = tmp_path / "study", tmp_path / "carry"
    _run(root, "full_IUQ_s3", [13000, 13500])
    _run(root, "baseline_s3", [19500, 20000], finished=True)
    (carry / "long" / "baseline_s3" / "ckpt").mkdir(parents=True)     # carried earlier, finished since
    assert study_carry.save(root, "long", carry) == ["full_IUQ_s3/iter_0013500.pt"]
    assert sorted(p.name for p in (carry / "long").iterdir()) == ["full_IUQ_s3"]
    assert [p.name for p in (carry / "long" / "full_IUQ_s3" / "ckpt").iterdir()] == ["iter_0013500.pt"]
    assert (carry / "long" / "full_IUQ_s3" / "history.jsonl").read_text() == '{"step": 13500}\n'


def test_restore_puts_runs_back_and_never_replaces_a_newer_checkpoint(tmp_path):
    old, carry, new = tmp_path / "old", tmp_path / "carry", tmp_path / "new"
    _run(old, "full_IUQ_s3", [13500])
    _run(old, "full_IUQ_s4", [9000])
    study_carry.save(old, "long", carry)
    _run(new, "full_IUQ_s4", [9500])                              # this machine got further already
    assert study_carry.restore(new, "long", carry) == ["full_IUQ_s3/iter_0013500.pt"]
    back = new / "runs" / "study" / "long" / "full_IUQ_s3"
    assert (back / "ckpt" / "iter_0013500.pt").read_bytes() == b"state 13500"
    assert (back / "history.jsonl").exists()
    assert [p.name for p in (new / "runs" / "study" / "long" / "full_IUQ_s4" / "ckpt").iterdir()] == [
        "iter_0009500.pt"]
