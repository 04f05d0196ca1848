"""DDP == one process (issue 5): 2 gloo ranks under torchrun vs one process with the same global batch, IUQ on.

Holds because the model uses GroupNorm, every random draw is keyed by (seed, step, image id), g by (seed,
step), the ranks' micro-batches are consecutive chunks of one process's batch, in-batch negatives and pushes are
all-gathered, and every loss normaliser is all-reduced. The DDP run itself checks at each checkpoint that all
ranks hold the same pixel memory (`checkpoint.rank_states` raises otherwise).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SETS = {"data.num_train": 64, "data.num_val": 32, "data.image_size": 64,     # the tiny preset's cached data
        "train.iters": 6, "train.batch_size": 4, "train.log_every": 1, "train.ckpt_every": 3,
        "train.eval_at_end": False, "train.threads": 1, "iuq.inter.pixels_per_instance": 20}


def _run(out: Path, launcher: list[str]) -> tuple[list[dict], dict]:
    sets = [x for k, v in SETS.items() for x in ("--set", f"{k}={v}")]
    proc = subprocess.run([sys.executable, *launcher, "-m", "iuq_lite.train", "--preset", "smoke_iuq", "--out",
                           str(out), "--no-progress", *sets], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return history, torch.load(out / "ckpt" / "iter_0000006.pt", weights_only=True)


@pytest.mark.multiprocess
def test_two_ranks_equal_one_process(tmp_path, tiny_data):
    one, state1 = _run(tmp_path / "one", [])
    two, state2 = _run(tmp_path / "two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    assert [h["step"] for h in two] == list(range(1, 7)) and "loss_inter" in two[0] and "loss_equi" in two[0]
    for a, b in zip(one, two):       # the logged losses are means over ranks
        for k in (k for k in a if k.startswith("loss")):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (a["step"], k, a[k], b[k])
    assert isinstance(state2["rng"], list) and len(state2["rng"]) == 2      # every rank's RNG state saved
    m1, m2 = state1["criterion"]["memory"], state2["criterion"]["memory"]
    assert m1["pushed"] == m2["pushed"] > 0 and torch.equal(m1["image_ids"], m2["image_ids"])
    torch.testing.assert_close(m2["features"], m1["features"], rtol=1e-4, atol=1e-5)
    for k, v in state1["model"].items():
        torch.testing.assert_close(state2["model"][k], v, rtol=1e-3, atol=1e-4, msg=k)
