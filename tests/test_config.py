import dataclasses

import pytest

import iuq_lite as iuq
from iuq_lite.config import PRESETS, from_dict, from_preset, to_dict, valid_keys


def test_every_preset_builds_and_iuq_twin_differs_only_in_iuq():
    for name in PRESETS:
        cfg = from_preset(name)
        assert cfg.preset == name
        if name.endswith("_iuq"):
            base = from_preset(name[: -len("_iuq")])
            assert cfg.iuq.inter.enabled and cfg.iuq.equi.enabled
            assert not base.iuq.inter.enabled and not base.iuq.equi.enabled
            assert dataclasses.replace(cfg, preset=base.preset, iuq=base.iuq) == base


def test_overrides_dotted_and_tuple_coercion():
    cfg = from_preset("tiny", {"train.iters": 5, "iuq.equi.kinds": ["hflip", "crop", "rotate"]})
    assert cfg.train.iters == 5
    assert cfg.iuq.equi.kinds == ("hflip", "crop", "rotate")
    assert cfg.iuq.equi.weight == 3.0 and cfg.iuq.inter.alpha == 0.25 and cfg.iuq.inter.gamma == 2.0


def test_unknown_key_lists_valid_keys():
    with pytest.raises(KeyError, match="train.iters"):
        from_preset("tiny", {"train.iterz": 5})
    with pytest.raises(KeyError, match="presets"):
        from_preset("nope")


def test_round_trip_plain_dict():
    cfg = from_preset("shapes_iuq", {"iuq.equi.ranges": {"crop": (0.5, 1.0)}, "data.knobs": {"p_deformed": 0.3}})
    d = to_dict(cfg)
    assert from_dict(d) == from_preset("shapes_iuq", {"iuq.equi.ranges": {"crop": [0.5, 1.0]},
                                                     "data.knobs": {"p_deformed": 0.3}})
    assert "train.batch_size" in valid_keys()


def test_stable_set_keys_exist():
    for key in ["train.iters", "train.seed", "train.batch_size", "data.root", "data.augment",
                "iuq.inter.enabled", "iuq.inter.capacity", "iuq.equi.enabled", "iuq.equi.kinds",
                "iuq.equi.as_augmentation"]:
        assert key in valid_keys()
    assert iuq.config.from_preset("coco_r50").model.num_classes == 80
