"""`python -m iuq_lite.bench gpu`: a clear message and exit 0 without CUDA; its step code runs (on the CPU)."""
import json
import subprocess
import sys

import pytest
import torch

from iuq_lite import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_bench_without_cuda_says_so_and_exits_0():
    res = subprocess.run([sys.executable, "-m", "iuq_lite.bench", "gpu"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0 and "no CUDA device" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["cuda"] is False


def test_gpu_step_figures_run_on_a_tiny_preset():
    out = bench.gpu_step_figures("tiny_iuq", device=torch.device("cpu"), batch=2, size=64, steps=1, warmup=1)
    assert out["images_per_s"] > 0 and out["peak_gib"] is None


def test_step_bench_times_every_row_of_a_study(monkeypatch):
    from iuq_lite import studies
    monkeypatch.setitem(studies.STUDIES, "_t", [("none", "tiny", {}, (0,)),
                                                     ("mini-batch only", "tiny", {"iuq.inter.enabled": True,
                                                                                  "iuq.inter.capacity": 0}, (0,))])
    out = bench.bench_step(steps=1, rounds=1, warmup=1, study="_t")
    assert list(out["step_s"]) == ["none", "mini-batch only"] and out["ratio_vs_baseline"]["none"] == 1.0
    assert all(v > 0 for v in out["step_s"].values()) and "inter_only_ok" not in out
