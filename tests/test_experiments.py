import json

import pytest

import iuq_lite as iuq
from iuq_lite import experiments as ex


def test_readme_tables_match_results():
    """The README's results tables are generated from results/*.json (`python -m iuq_lite.experiments table`)."""
    readme = (ex.ROOT / "README.md").read_text()
    for name in ex.STUDIES:
        assert ex.readme_block(name) in readme, f"README block for {name!r} is stale: run experiments table"


def test_summary_means_and_sds(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    runs = [{"row": "baseline", "preset": "shapes", "seed": s, "overrides": {}, "step_s": 0.5, "peak_mb": 900,
             "metrics": {"segm/AP": ap, "segm/APl": None}} for s, ap in enumerate([10.0, 12.0, 14.0])]
    (tmp_path / "main.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    rows = ex.summarize("main")
    assert len(rows) == 1 and rows[0]["n"] == 3 and rows[0]["seeds"] == [0, 1, 2]
    mean, sd = rows[0]["metrics"]["segm/AP"]
    assert mean == pytest.approx(12.0) and sd == pytest.approx(2.0)
    assert "segm/APl" not in rows[0]["metrics"]
    assert "12.0 ± 2.0" in ex.markdown_table("main")


def test_paired_deltas_use_the_seeds_both_rows_have(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    monkeypatch.setitem(ex.STUDIES, "_t", [("base", "shapes", {}, (0, 1)), ("ours", "shapes_iuq", {}, (0, 1, 2))])
    runs = [{"preset": p, "seed": s, "overrides": {}, "metrics": {"segm/AP": ap}}
            for p, s, ap in [("shapes", 0, 10.0), ("shapes", 1, 12.0), ("shapes_iuq", 0, 11.5),
                             ("shapes_iuq", 1, 11.0), ("shapes_iuq", 2, 30.0)]]
    (tmp_path / "_t.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert ex.paired_deltas("_t") == {"ours": {0: pytest.approx(1.5), 1: pytest.approx(-1.0)}}
    assert "+1.5 (s0), -1.0 (s1)" in ex.markdown_table("_t")


def test_every_study_row_is_a_valid_config():
    for rows in ex.STUDIES.values():
        for _, preset, over, seeds in rows:
            iuq.config.from_preset(preset, {**over, **ex.STUDY_SETTINGS})
            assert seeds


def test_reproduce_reuses_a_run_recorded_by_another_study(tmp_path, monkeypatch):
    """Table S4's "none" row is main's baseline run: reproduce copies its record instead of training again."""
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    monkeypatch.setattr(ex, "STUDIES", {"main": [("baseline", "shapes", {}, (0,))],
                                        "capacity": [("none", "shapes", {}, (0,))]})
    rec = {"row": "baseline", "preset": "shapes", "seed": 0, "overrides": {}, "metrics": {"segm/AP": 20.0}}
    (tmp_path / "main.json").write_text(json.dumps({"command": "x", "commit": None, "runs": [rec]}))
    monkeypatch.setattr(ex, "run_one", lambda *a, **k: pytest.fail("trained a run that was already recorded"))
    ex.reproduce(only=["capacity"])
    runs = ex.load_results("capacity")["runs"]
    assert [(r["row"], r["metrics"]["segm/AP"], r["reused_from"]) for r in runs] == [("none", 20.0, "results/main.json")]
    # a second process that saw the same stale state appends nothing (the check runs under the results lock)
    assert not ex._append("capacity", {**rec, "row": "none"}) and len(ex.load_results("capacity")["runs"]) == 1


def test_paired_ci_is_the_t_interval_with_n_minus_1_dof():
    ci = ex.paired_ci([1.0, 2.0, 3.0])              # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2.0) and ci["sd"] == pytest.approx(1.0)
    assert (ci["lo"], ci["hi"]) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-5)
    wide, narrow = ex.paired_ci([1.0, 3.0]), ex.paired_ci([1.0, 3.0] * 5)   # more pairs: a narrower interval
    assert wide["hi"] - wide["lo"] > narrow["hi"] - narrow["lo"]
    assert ex.paired_ci([0.5])["lo"] is None
    with pytest.raises(ValueError):
        ex.paired_ci([])


def test_gain_summary_states_the_mean_paired_delta_and_its_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    runs = [{"row": row, "preset": preset, "seed": s, "overrides": {}, "metrics": {"segm/AP": ap}}
            for row, preset, aps in (("baseline", "shapes_long", [40.0, 42.0, 41.0]),
                                     ("full IUQ", "shapes_long_iuq", [41.0, 44.0, 42.0]))
            for s, ap in enumerate(aps)]
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    line = ex.gain_summary("long")
    ci = ex.paired_ci([1.0, 2.0, 1.0])
    assert f"mean paired ΔAP +1.3 over 3 seeds, 95 % CI [{ci['lo']:+.1f}, {ci['hi']:+.1f}]" in line


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
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
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
    monkeypatch.setattr(ex, "RESULTS", tmp_path)
    out = tmp_path / "fig" / "curves.png"
    with pytest.raises(FileNotFoundError, match="no recorded seed-0 learning curves"):
        ex.plot_curves(out)
    curve = [{"step": 2, "minutes": 1.0, "AP": 10.0}, {"step": 4, "minutes": 2.0, "AP": 20.0, "final": True}]
    runs = [{"row": "baseline", "preset": "shapes_long", "seed": s, "overrides": {}, "metrics": {"segm/AP": 20.0},
             "curve": curve} for s in (0, 1)]
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert ex.plot_curves(out) == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob("*.tmp.png"))
