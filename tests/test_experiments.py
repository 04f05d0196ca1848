"""experiments.py: running the studies (reproduce, recheck, retime) and what is drawn from their runs."""
import json
import types

import pytest

from iuq_lite import experiments as ex
from iuq_lite import studies as st


def test_reproduce_reuses_a_run_recorded_by_another_study(tmp_path, monkeypatch):
    """Table S4's "none" row is main's baseline run: reproduce copies its record instead of training again."""
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    monkeypatch.setattr(st, "STUDIES", {"main": [("baseline", "shapes", {}, (0,))],
                                        "capacity": [("none", "shapes", {}, (0,))]})
    rec = {"row": "baseline", "preset": "shapes", "seed": 0, "overrides": {}, "metrics": {"segm/AP": 20.0}}
    (tmp_path / "main.json").write_text(json.dumps({"command": "x", "commit": None, "runs": [rec]}))
    monkeypatch.setattr(ex, "run_one", lambda *a, **k: pytest.fail("trained a run that was already recorded"))
    ex.reproduce(only=["capacity"])
    runs = st.load_results("capacity")["runs"]
    assert [(r["row"], r["metrics"]["segm/AP"], r["reused_from"]) for r in runs] == [("none", 20.0, "results/main.json")]
    # a second process that saw the same stale state appends nothing (the check runs under the results lock)
    assert not st.append_run("capacity", {**rec, "row": "none"}) and len(st.load_results("capacity")["runs"]) == 1


def test_a_finished_run_folder_is_recorded_not_retrained(tmp_path, monkeypatch):
    """reproduce resumes: a run folder whose manifest has this exact configuration is recorded as it is."""
    from iuq_lite.config import from_preset, to_dict
    sets = {"train.iters": 5, "train.threads": 1, "train.seed": 0}
    manifest = {"config": to_dict(from_preset("tiny", sets)), "iters": 5, "seconds": 9.0, "peak_mb": 10,
                "commit": "abc", "dirty": False, "metrics": {"segm/AP": 1.5}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "history.jsonl").write_text(json.dumps({"step": 2, "seconds": 3.0, "segm/AP": 0.5}) + "\n")
    monkeypatch.setattr(ex.subprocess, "Popen", lambda *a, **k: pytest.fail("retrained a finished run"))
    rec = ex.run_one("tiny", 0, {"train.iters": 5}, tmp_path, extra={"train.threads": 1})
    assert rec["metrics"] == {"segm/AP": 1.5} and rec["commit"] == "abc"
    assert rec["curve"] == [{"step": 2, "minutes": 0.05, "AP": 0.5},
                            {"step": 5, "minutes": 0.15, "AP": 1.5, "final": True}]


def test_recheck_compares_a_retrained_run_with_its_record(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    runs = [{"row": "baseline", "preset": "shapes_long", "seed": 0, "overrides": {}, "commit": "abc",
             "metrics": {"segm/AP": 45.0}}]
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    for retrained, ok in ((45.08, True), (44.8, False)):
        monkeypatch.setattr(ex, "run_one",
                            lambda *a, ap=retrained, **k: {"metrics": {"segm/AP": ap}, "commit": "def", "seconds": 1.0})
        out = ex.recheck("long", "baseline", 0)
        assert out["ok"] is ok and out["recorded_commit"] == "abc" and out["commit"] == "def"
        assert out["delta"] == pytest.approx(retrained - 45.0, abs=0.01)
    # every comparison is kept, in order, in results/recheck.json
    assert [c["ok"] for c in json.loads((tmp_path / "recheck.json").read_text())["checks"]] == [True, False]


def test_plot_curves_draws_the_recorded_seed0_curves(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    out = tmp_path / "fig" / "curves.png"
    with pytest.raises(FileNotFoundError, match="no recorded seed-0 learning curves"):
        ex.plot_curves(out)
    curve = [{"step": 2, "minutes": 1.0, "AP": 10.0}, {"step": 4, "minutes": 2.0, "AP": 20.0, "final": True}]
    runs = [{"row": "baseline", "preset": "shapes_long", "seed": s, "overrides": {}, "metrics": {"segm/AP": 20.0},
             "curve": curve} for s in (0, 1)]
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert ex.plot_curves(out) == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob("*.tmp.png"))


def test_retime_rejoins_the_clock_of_runs_resumed_by_old_revisions(tmp_path, monkeypatch):
    """A run resumed at step 4 by a revision whose checkpoints did not carry the clock logged 3 s where 23 s had
    passed: retime re-derives its seconds and curve minutes; a run without a restart is left as recorded."""
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    histories = {"baseline": [{"step": 2, "seconds": 10.0, "segm/AP": 1.0}, {"step": 4, "seconds": 20.0},
                              {"step": 6, "seconds": 3.0, "segm/AP": 2.0}],
                 "full IUQ": [{"step": 2, "seconds": 10.0, "segm/AP": 1.0}, {"step": 4, "seconds": 20.0}]}
    runs = []
    for row, hist in histories.items():
        out = tmp_path / "runs" / "long" / f"{row.replace(' ', '_')}_s0"
        out.mkdir(parents=True)
        (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
        (out / "manifest.json").write_text(json.dumps({"iters": 8, "seconds": 6.0 if row == "baseline" else 30.06}))
        runs.append({"row": row, "preset": "shapes_long", "seed": 0, "overrides": {}, "seconds": 1.0,
                     "metrics": {"segm/AP": 3.0}, "curve": []})
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert ex.retime("long", tmp_path / "runs") == ["baseline s0"]
    base, iuq_run = st.load_results("long")["runs"]
    assert base["seconds"] == 26.0 and [p["minutes"] for p in base["curve"]] == [0.17, 0.38, 0.43]
    assert iuq_run["seconds"] == 1.0 and iuq_run["curve"] == []


def test_diagnose_keeps_the_entries_of_runs_whose_folders_are_gone(tmp_path, monkeypatch):
    """A replaced machine keeps only the repository: diagnosing the runs it still has replaces their entries and
    keeps the others as measured, each entry with the revision it was measured at."""
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    monkeypatch.setattr(st, "STUDIES", {"long": [("baseline", "shapes_long", {}, (0,)),
                                                 ("full IUQ", "shapes_long_iuq", {}, (3,))]})
    monkeypatch.setattr(ex, "load_model", lambda path: (None, types.SimpleNamespace(data=None)))
    monkeypatch.setattr(ex, "build_datasets", lambda cfg: (None, None))
    monkeypatch.setattr(ex, "query_uniqueness", lambda *a, **k: dict.fromkeys(
        ("cross_fire", "cross_fire_same_class", "cross_fire_other_class", "own_fire"), 0.5))
    monkeypatch.setattr(ex, "equivariance_errors", lambda *a, **k: {"hflip": 0.1, "crop": 0.2})
    monkeypatch.setattr(ex.utils, "git_commit", lambda *a: "new")
    old = [{"row": r, "seed": s, "segm/AP": 1.0, "cross_fire": 0.9} for r, s in (("baseline", 0), ("full IUQ", 3))]
    (tmp_path / "long_diagnostics.json").write_text(json.dumps({"commit": "old", "runs": old}))
    run = tmp_path / "runs" / "long" / "full_IUQ_s3"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "manifest.json").write_text(json.dumps({"preset": "shapes_long_iuq", "seed": 3, "overrides": {
        "train.threads": 1, "train.seed": 3}, "metrics": {"segm/AP": 2.0}}))
    res = ex.diagnose("long", tmp_path / "runs")
    assert [(r["row"], r["seed"], r["commit"], r["cross_fire"], r["segm/AP"]) for r in res["runs"]] == [
        ("baseline", 0, "old", 0.9, 1.0), ("full IUQ", 3, "new", 0.5, 2.0)]
    assert json.loads((tmp_path / "long_diagnostics.json").read_text()) == res
