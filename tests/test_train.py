import json

import pytest
import torch

import iuq_lite as iuq
from iuq_lite.train import epoch_indices, lr_lambda, parse_sets


def test_parse_sets_literals_and_strings():
    assert parse_sets(["train.iters=5", "iuq.equi.kinds=['hflip','crop']", "data.root=/x/coco"]) == {
        "train.iters": 5, "iuq.equi.kinds": ["hflip", "crop"], "data.root": "/x/coco"}


def test_lr_schedule_warms_up_then_decays():
    cfg = iuq.config.from_preset("tiny", {"train.iters": 100, "train.warmup_iters": 10})
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) < 0.1 and f(99) >= cfg.train.min_lr_ratio


def test_epoch_order_is_keyed_by_seed_and_epoch_and_shards_disjointly():
    a = epoch_indices(20, seed=0, epoch=3)
    assert a == epoch_indices(20, seed=0, epoch=3) and a != epoch_indices(20, seed=0, epoch=4)
    r0, r1 = epoch_indices(20, seed=0, epoch=3, rank=0, world=2), epoch_indices(20, seed=0, epoch=3, rank=1, world=2)
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 10
    # chunked: the ranks' micro-batches of 3 images, in rank order, are one process's order (DDP == one process)
    r = [epoch_indices(24, seed=1, epoch=0, rank=k, world=2, chunk=3) for k in (0, 1)]
    assert [i for c in range(4) for k in (0, 1) for i in r[k][3 * c:3 * c + 3]] == epoch_indices(24, seed=1, epoch=0)


def test_tiny_run_writes_the_run_folder(tmp_path):
    cfg = iuq.config.from_preset("tiny_iuq", {"train.iters": 6, "train.log_every": 2})
    res = iuq.train.train(cfg, out=tmp_path, progress=False)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "history.jsonl").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["preset"] == "tiny_iuq" and manifest["model_sha256"] and manifest["data_sha256"]
    assert set(res.metrics) >= {"segm/AP", "segm/AP50"} and 0 <= res.metrics["segm/AP"] <= 100
    assert [h["step"] for h in res.history] == [2, 4, 6]
    assert all("loss_inter" in h and "loss_equi" in h for h in res.history)
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert iuq.config.from_dict(state["config"]) == cfg
    model, cfg2 = iuq.checkpoint.load_model(tmp_path / "model.pt")
    assert cfg2 == cfg


def test_resume_after_kill_gives_identical_weights(tmp_path):
    """Stop after 4 steps (as a kill would leave it), resume to 8: same weights as 8 steps straight."""
    over = {"train.iters": 8, "train.ckpt_every": 4, "train.eval_at_end": False}
    cfg = iuq.config.from_preset("tiny_iuq", over)
    straight = iuq.train.train(cfg, out=tmp_path / "a", progress=False)
    half = iuq.train.train(cfg, out=tmp_path / "b", progress=False, stop_after=4)
    assert half.checkpoint.endswith("iter_0000004.pt") and not (tmp_path / "b" / "model.pt").exists()
    resumed = iuq.train.train(cfg, out=tmp_path / "b", resume=True, progress=False)
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_resumed_run_goes_on_with_its_clock(tmp_path):
    """"seconds" is training time since the run began: a resumed run adds to the checkpoint's clock; a checkpoint
    from before the clock was carried takes it from the history's last kept record."""
    cfg = iuq.config.from_preset("tiny", {"train.iters": 6, "train.ckpt_every": 2, "train.log_every": 2,
                                          "train.eval_at_end": False})
    for carried in (True, False):
        out = tmp_path / str(carried)
        iuq.train.train(cfg, out=out, progress=False, stop_after=4)
        ckpt = out / "ckpt" / "iter_0000004.pt"
        state = torch.load(ckpt, weights_only=True)
        if carried:
            state["seconds"] = 1000.0                      # as if the first process had trained 1,000 s
        else:
            del state["seconds"]
            lines = (out / "history.jsonl").read_text().splitlines()
            (out / "history.jsonl").write_text("\n".join(
                json.dumps({**json.loads(x), "seconds": 500.0 * (i + 1)}) for i, x in enumerate(lines)) + "\n")
        torch.save(state, ckpt)
        res = iuq.train.train(cfg, out=out, resume=True, progress=False)
        seconds = [h["seconds"] for h in res.history]
        # carried: the checkpoint's 1,000 s; not: the history's records (500, 1,000 s at steps 2 and 4)
        assert [h["step"] for h in res.history] == [2, 4, 6] and seconds[-1] > 1000.0
        assert json.loads((out / "manifest.json").read_text())["seconds"] >= seconds[-1]


def test_elapsed_seconds_joins_the_clock_restarts_of_old_resumes():
    history = [{"step": 2, "seconds": 10.0}, {"step": 4, "seconds": 20.0},      # resumed from step 4:
               {"step": 6, "seconds": 3.0}, {"step": 8, "seconds": 13.0},       # its clock restarted
               {"step": 10, "seconds": 1.0}]
    assert iuq.train.elapsed_seconds(history) == [10.0, 20.0, 23.0, 33.0, 34.0]
    assert iuq.train.elapsed_seconds(history[:2]) == [10.0, 20.0] and iuq.train.elapsed_seconds([]) == []


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    over = {"train.iters": 2, "train.eval_at_end": False}
    iuq.train.train(iuq.config.from_preset("tiny", over), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different config"):
        iuq.train.train(iuq.config.from_preset("tiny_iuq", over), out=tmp_path, resume=True, progress=False)


def test_corrupt_checkpoint_and_killed_write_fall_back_to_the_previous(tmp_path):
    """A truncated newest checkpoint is skipped with a warning naming it, a temp file left by a kill during a
    write is ignored (and cleaned up): the run resumes from the previous checkpoint and ends bit-identical."""
    cfg = iuq.config.from_preset("tiny", {"train.iters": 6, "train.ckpt_every": 2, "train.eval_at_end": False})
    straight = iuq.train.train(cfg, out=tmp_path / "a", progress=False)
    iuq.train.train(cfg, out=tmp_path / "b", progress=False, stop_after=4)
    newest = tmp_path / "b" / "ckpt" / "iter_0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])                         # truncated
    stray = tmp_path / "b" / "ckpt" / "iter_0000006.pt.k1ll3d.tmp"         # a SIGKILL during a write
    stray.write_bytes(b"half a checkpoint")
    with pytest.warns(RuntimeWarning, match="iter_0000004.pt is unreadable"):
        resumed = iuq.train.train(cfg, out=tmp_path / "b", resume=True, progress=False)
    assert not stray.exists()
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    """accum_steps=2: two micro-batches, normalised by the whole step's counts, give the whole batch's losses
    and (one AdamW step) weights; the equivariance loss is on, so its mask count is checked too."""
    runs = {}
    for accum in (1, 2):
        cfg = iuq.config.from_preset("tiny", {"train.iters": 1, "train.log_every": 1, "train.eval_at_end": False,
                                              "train.accum_steps": accum, "iuq.equi.enabled": True})
        runs[accum] = iuq.train.train(cfg, out=tmp_path / str(accum), progress=False)
    one, two = runs[1].history[0], runs[2].history[0]
    assert {k: pytest.approx(v, rel=1e-5) for k, v in one.items() if k.startswith("loss")} == \
        {k: v for k, v in two.items() if k.startswith("loss")}
    a = torch.load(runs[1].checkpoint, weights_only=True)["model"]
    b = torch.load(runs[2].checkpoint, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    with pytest.raises(ValueError, match="accum_steps"):
        iuq.train.train(iuq.config.from_preset("tiny", {"train.accum_steps": 3}), out=tmp_path / "3", progress=False)


def test_logged_records_go_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    class Writer:                  # stands in for torch.utils.tensorboard.SummaryWriter
        scalars, closed = [], False

        def add_scalar(self, key, value, step):
            self.scalars.append((key, step))

        def close(self):
            self.closed = True
    writer = Writer()
    monkeypatch.setattr(iuq.train, "_tensorboard", lambda out: writer)
    cfg = iuq.config.from_preset("tiny", {"train.iters": 2, "train.log_every": 1, "train.eval_at_end": False})
    iuq.train.train(cfg, out=tmp_path, progress=False)
    assert {("loss", 1), ("loss_ce", 2), ("lr", 2)} <= set(writer.scalars) and writer.closed
