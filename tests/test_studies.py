"""studies.py: the study definitions, results records, tables and statistics."""
import json

import pytest

import iuq_lite as iuq
from iuq_lite import studies as st


def test_readme_tables_match_results():
    """The README's results tables are generated from results/*.json (`python -m iuq_lite.experiments table`)."""
    readme = (st.ROOT / "README.md").read_text()
    for name in st.STUDIES:
        assert st.readme_block(name) in readme, f"README block for {name!r} is stale: run experiments table"


def test_summary_means_and_sds(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    runs = [{"row": "baseline", "preset": "shapes", "seed": s, "overrides": {}, "step_s": 0.5, "peak_mb": 900,
             "metrics": {"segm/AP": ap, "segm/APl": None}} for s, ap in enumerate([10.0, 12.0, 14.0])]
    (tmp_path / "main.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    rows = st.summarize("main")
    assert len(rows) == 1 and rows[0]["n"] == 3 and rows[0]["seeds"] == [0, 1, 2]
    mean, sd = rows[0]["metrics"]["segm/AP"]
    assert mean == pytest.approx(12.0) and sd == pytest.approx(2.0)
    assert "segm/APl" not in rows[0]["metrics"]
    assert "12.0 ± 2.0" in st.markdown_table("main")


def test_paired_deltas_use_the_seeds_both_rows_have(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    monkeypatch.setitem(st.STUDIES, "_t", [("base", "shapes", {}, (0, 1)), ("ours", "shapes_iuq", {}, (0, 1, 2))])
    runs = [{"preset": p, "seed": s, "overrides": {}, "metrics": {"segm/AP": ap}}
            for p, s, ap in [("shapes", 0, 10.0), ("shapes", 1, 12.0), ("shapes_iuq", 0, 11.5),
                             ("shapes_iuq", 1, 11.0), ("shapes_iuq", 2, 30.0)]]
    (tmp_path / "_t.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert st.paired_deltas("_t") == {"ours": {0: pytest.approx(1.5), 1: pytest.approx(-1.0)}}
    assert "+1.5 (s0), -1.0 (s1)" in st.markdown_table("_t")


def test_every_study_row_is_a_valid_config():
    for rows in st.STUDIES.values():
        for _, preset, over, seeds in rows:
            iuq.config.from_preset(preset, {**over, **st.STUDY_SETTINGS})
            assert seeds


def test_paired_ci_is_the_t_interval_with_n_minus_1_dof():
    ci = st.paired_ci([1.0, 2.0, 3.0])              # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2.0) and ci["sd"] == pytest.approx(1.0)
    assert (ci["lo"], ci["hi"]) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-5)
    wide, narrow = st.paired_ci([1.0, 3.0]), st.paired_ci([1.0, 3.0] * 5)   # more pairs: a narrower interval
    assert wide["hi"] - wide["lo"] > narrow["hi"] - narrow["lo"]
    assert st.paired_ci([0.5])["lo"] is None
    with pytest.raises(ValueError):
        st.paired_ci([])


def test_gain_summary_states_the_mean_paired_delta_and_its_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    runs = [{"row": row, "preset": preset, "seed": s, "overrides": {}, "metrics": {"segm/AP": ap}}
            for row, preset, aps in (("baseline", "shapes_long", [40.0, 42.0, 41.0]),
                                     ("full IUQ", "shapes_long_iuq", [41.0, 44.0, 42.0]))
            for s, ap in enumerate(aps)]
    (tmp_path / "long.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    line = st.gain_summary("long")
    ci = st.paired_ci([1.0, 2.0, 1.0])
    assert f"mean paired ΔAP +1.3 over 3 seeds, 95 % CI [{ci['lo']:+.1f}, {ci['hi']:+.1f}]" in line


def test_readme_block_lists_a_ci_only_for_rows_with_two_or_more_seed_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    runs = [{"row": row, "preset": preset, "seed": s, "overrides": over, "metrics": {"segm/AP": ap}}
            for row, preset, over, aps in (("baseline", "shapes", {}, [20.0, 22.0]),
                                           ("full IUQ", "shapes_iuq", {}, [19.0, 20.0]),
                                           ("inter-scene only", "shapes", {"iuq.inter.enabled": True}, [21.0]))
            for s, ap in enumerate(aps)]
    (tmp_path / "main.json").write_text(json.dumps({"command": "x", "commit": None, "runs": runs}))
    assert "inter-scene only − baseline" in st.gain_summary("main")            # one pair: no interval, still said
    block = st.readme_block("main")
    assert "full IUQ − baseline: mean paired ΔAP -1.5 over 2 seeds, 95 % CI [" in block
    assert "inter-scene only − baseline" not in block                          # its one delta is in the table
