"""demo.py (`make demo`): the printed table. The demo's training is exercised by `make demo` itself."""
import iuq_lite as iuq


def test_demo_table_prints_each_run_and_the_recorded_study(monkeypatch):
    monkeypatch.setattr(iuq.demo, "markdown_table", lambda name: f"<table of {name}>")
    metrics = {"shapes": {"metrics": {"segm/AP": 9.25, "segm/AP50": 20.0, "segm/APl": None}, "seconds": 190.0},
               "shapes_iuq": {"metrics": {"segm/AP": 7.3}, "seconds": 270.5}}
    lines = iuq.demo.demo_table(metrics, 400).splitlines()
    assert "400 steps" in lines[0] and "claim nothing" in lines[0]
    assert lines[1] == "| run | AP | AP50 | AP75 | APs | APm | seconds |"
    assert lines[3] == "| shapes | 9.2 | 20.0 | – | – | – | 190.0 |"      # missing or None: "–"
    assert lines[4] == "| shapes_iuq | 7.3 | – | – | – | – | 270.5 |"
    assert lines[-1] == "<table of main>"                                  # beside the committed short study
