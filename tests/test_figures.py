"""Figures S1-S3: the selection rule on hand-made scores, colours, the panel grid, and end-to-end runs on two
untrained tiny checkpoints (different seeds, so the two models' predictions differ)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import iuq_lite as iuq
from iuq_lite.figures import main, make_figures, render_figure, select_rows
from iuq_lite.viz import match_colors, palette


def rec(iid, b_ap, o_ap, b_iou, o_iou, groups=None):
    """A per-image score record as figures._score writes it; groups: {group: (baseline, ours) group_iou}."""
    groups = groups or {}
    return {"image_id": iid,
            "baseline": {"ap": b_ap, "iou": b_iou, "group_iou": {g: v[0] for g, v in groups.items()}},
            "ours": {"ap": o_ap, "iou": o_iou, "group_iou": {g: v[1] for g, v in groups.items()}}}


def test_gain_rule_ranks_by_ap_gain_then_iou_gain_then_image_id():
    scores = [rec(1, 10, 20, .5, .5), rec(2, 10, 40, .5, .5), rec(3, 0, 10, .2, .6), rec(6, 0, 10, .2, .3),
              rec(4, 0, 10, .2, .3), rec(5, None, None, None, None)]          # 5: no GT, never shown
    assert select_rows(scores, rule="gain", n=10) == [2, 3, 4, 6, 1]
    assert select_rows(scores, rule="gain", n=2) == [2, 3]
    assert select_rows(scores, rule="gain", n=10, exclude=[3, 4]) == [2, 6, 1]
    assert select_rows(list(reversed(scores)), rule="gain", n=10) == [2, 3, 4, 6, 1]  # input order irrelevant


def test_failure_rule_puts_hard_for_both_first_then_lowest_ours_iou():
    scores = [rec(1, 0, 0, .5, .5, {"deformed": (.2, .1)}), rec(2, 0, 0, .5, .5, {"deformed": (.8, .0)}),
              rec(3, 0, 0, .5, .5, {"deformed": (.3, .1)}), rec(4, 0, 0, .5, .5, {"transparent": (.0, .0)})]
    assert select_rows(scores, rule="failure", n=10, group="deformed") == [1, 3, 2]
    assert select_rows(scores, rule="failure", n=10, group="deformed", exclude=[1]) == [3, 2]
    assert select_rows(scores, rule="failure", n=10, group="small_blurry") == []
    with pytest.raises(ValueError):
        select_rows(scores, rule="failure", n=1)


def test_match_colors_follow_the_gt_instance_and_greys_are_distinct():
    gt = palette(2)
    c = match_colors(np.array([[0.7, 0.1], [0.2, 0.3], [0.0, 0.49]]), gt)
    np.testing.assert_array_equal(c[0], gt[0])
    assert not np.allclose(c[1], c[2]) and all(np.ptp(x) < 0.25 for x in c[1:])      # distinct, grey-ish
    assert match_colors(np.zeros((0, 3)), palette(3)).shape == (0, 3)


def test_render_figure_has_one_axes_per_panel_and_a_placeholder_for_empty_sections():
    panel = (np.zeros((8, 8, 3)), "caption")
    fig = render_figure([("(i) group", [[panel] * 4] * 2), ("(ii) empty", [])], title="t")
    assert len(fig.axes) == 2 * 4 + 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_data):
    """Two untrained tiny models in the model.pt format (training is not what these tests check)."""
    cfg, out = iuq.config.from_preset("tiny"), tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        state = iuq.model.build_model(cfg).state_dict()
        torch.save({"model": state, "config": iuq.config.to_dict(cfg)}, out / f"s{seed}.pt")
        paths.append(out / f"s{seed}.pt")
    return paths


def test_make_figures_writes_the_grid_and_is_deterministic(checkpoints, tmp_path):
    # untrained scores stay below ~0.2: a low threshold makes some predictions drawn and matched
    kw = {"num_images": 6, "rows": 1, "rows_per_group": 1, "score_threshold": 0.1}
    first = make_figures(*checkpoints, tmp_path / "a", **kw)
    second = make_figures(*checkpoints, tmp_path / "b", **kw)
    assert [p.name for p in first] == ["S1.png", "S2.png", "S3.png"]
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == ["S1.json", "S1.png", "S2.json", "S2.png",
                                                                  "S3.json", "S3.png"]   # no temp file left
    assert not plt.get_fignums()                  # written and closed: a notebook does not show them again
    for p, q in zip(first, second):
        with Image.open(p) as im:
            assert im.width == round(4 * 1.9 * 150)                            # four panel columns at 150 dpi
        assert p.with_suffix(".json").read_text() == q.with_suffix(".json").read_text()
    s1, s2, s3 = (json.loads(p.with_suffix(".json").read_text()) for p in first)
    assert len(s1["rows"]) == len(s2["rows"]) == 1 and s1["rows"][0]["image_id"] != s2["rows"][0]["image_id"]
    assert len(s2["columns"]) == 4 and "no CondInst checkpoints" in s1["title"]
    assert s1["selection_rule"].startswith(iuq.figures.RULES["S1"]) and s1["checkpoints"] == s2["checkpoints"]
    assert 1 <= len(s3["rows"]) <= 5 and len({r["image_id"] for r in s3["rows"]}) == len(s3["rows"])
    for r in s3["rows"]:                                     # each S3 row shows GT of its group
        assert any(r["group"] in g["groups"] for g in r["gt"])
    drawn = [i for r in s2["rows"] + s3["rows"] for m in ("baseline", "ours") for i in r[m]["instances"]]
    assert drawn and all(i["score"] >= 0.1 for i in drawn)
    assert len(s2["per_image"]) == 6


def test_s1_uses_the_condinst_pair_when_given(checkpoints, tiny_data, tmp_path):
    cfg, pair = iuq.config.from_preset("shapes_condinst", {"model.pixel_channels": 32, "model.head_convs": 1}), []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = iuq.model.build_model(cfg)
        with torch.no_grad():
            model.cls_logits.bias.fill_(-1.0)             # untrained scores ~0.27: some are drawn at 0.1
        torch.save({"model": model.state_dict(), "config": iuq.config.to_dict(cfg)}, tmp_path / f"c{seed}.pt")
        pair.append(tmp_path / f"c{seed}.pt")
    make_figures(*checkpoints, tmp_path / "out", num_images=6, rows=2, rows_per_group=1, score_threshold=0.1,
                 s1_pair=pair)
    s1, s2 = (json.loads((tmp_path / "out" / f"{k}.json").read_text()) for k in ("S1", "S2"))
    assert s1["columns"][1:3] == ["CondInst", "CondInst + IUQ (ours)"] and s2["columns"][1] == "Mask2Former"
    assert s1["checkpoints"]["ours"].endswith("c1.pt") and s1["selection_rule"].startswith(
        iuq.figures.RULES["S1 CondInst"])
    assert [r["image_id"] for r in s1["rows"]] == select_rows(s1["per_image"], rule="gain", n=2)
    assert s1["per_image"] != s2["per_image"]                 # scored with the CondInst pair, not S2's


def test_cli_prints_the_figures_json_last(checkpoints, tmp_path, capsys):
    main(["--out", str(tmp_path), "--baseline", str(checkpoints[0]), "--ours", str(checkpoints[1]),
          "--num-images", "3"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert [p.rsplit("/", 1)[1] for p in json.loads(last)["figures"]] == ["S1.png", "S2.png", "S3.png"]


def test_missing_checkpoint_says_how_to_make_it(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        make_figures(tmp_path / "missing.pt", checkpoints[1], tmp_path)


def test_untagged_data_gets_groups_from_assign_groups(tiny_data, tmp_path):
    # COCO has no "groups" tags: figures tags the shown images with analysis.assign_groups instead
    from iuq_lite.data.coco import CocoInstances
    from iuq_lite.figures import _tag_groups
    data = json.loads(Path(tiny_data["val_ann"]).read_text())
    for a in data["annotations"]:
        a.pop("groups", None)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoInstances(tiny_data["val_images"], tmp_path / "ann.json")
    _tag_groups(ds, ds.ids[:4])
    tagged = [g for i in range(4) for g in ds[i][1]["groups"]]
    assert len(tagged) == sum(len(ds.coco.imgToAnns[i]) for i in ds.ids[:4]) and any(tagged)
    assert all(set(g) <= set(iuq.analysis.GROUPS) for g in tagged)
    assert "groups" not in ds.coco.imgToAnns[ds.ids[5]][0]                     # only the shown images
