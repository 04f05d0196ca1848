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


def test_every_study_row_is_a_valid_config():
    for rows in ex.STUDIES.values():
        for _, preset, over, seeds in rows:
            iuq.config.from_preset(preset, {**over, **ex.STUDY_SETTINGS})
            assert seeds
