"""Drawing helpers that notebooks call: they return a Figure with what was asked for."""
import matplotlib

import iuq_lite as iuq

matplotlib.use("Agg")


def test_learning_curves_draw_ap_against_steps_and_minutes():
    curves = {"a": [{"step": 2000, "minutes": 5.0, "AP": 20.0}, {"step": 4000, "minutes": 10.0, "AP": 30.0,
                                                                  "final": True}],
              "b": [{"step": 4000, "minutes": 20.0, "AP": 25.0, "final": True}]}
    fig = iuq.viz.show_learning_curves(curves)
    steps_ax, minutes_ax = fig.axes
    assert list(steps_ax.lines[0].get_xdata()) == [2000, 4000] and list(minutes_ax.lines[0].get_xdata()) == [5, 10]
    assert list(steps_ax.lines[1].get_ydata()) == [30.0]          # the final point, filled
    assert [t.get_text() for t in steps_ax.get_legend().get_texts()] == ["a", "b"]
