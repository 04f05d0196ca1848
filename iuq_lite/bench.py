"""Benchmarks that print figures: ``python -m iuq_lite.bench NAME`` (progress on stderr, last stdout line JSON).

    python -m iuq_lite.bench inter-loss      # fused inter-scene loss vs the bare einsum, time and memory
    python -m iuq_lite.bench gpu             # CUDA: coco_r50 training images/s/GPU and peak memory, +/- IUQ
    python -m iuq_lite.bench step [--preset shapes_condinst] [--steps 10 --rounds 4 --warmup 50]
    python -m iuq_lite.bench step --study capacity   # every row of a study (Table S4 analog's step times)
    python -m iuq_lite.bench samples         # CPU over-fit on the real sample photos (`make samples` first)
    python -m iuq_lite.bench samples-dryrun  # 2 CPU steps of coco_r50(_iuq) on them -> results/samples_dryrun.json

BENCHMARKS maps a name to a function returning a JSON-able dict; add entries there.
Timings are medians of alternating runs after warm-up, in one process, so load from other processes hits
every variant alike; re-run on an idle machine before quoting them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import Config, from_preset
from .data.coco import CocoInstances, build_datasets
from .data.format import split_paths
from .data.samples import DEFAULT_ROOT
from .evaluate import evaluate, postprocess
from .iuq import IUQCriterion, TwoViews
from .iuq import inter as K
from .model import build_criterion, build_model, iuq_adapter
from .studies import RESULTS, ROOT, STUDIES
from .train import batches, build_optimizer, train
from .utils import git_commit, write_json

# B=2 images, Q=100 queries, C=256, M=100k memory pixels: Mask2Former R50 on COCO, per GPU (METHOD §2).
INTER_SHAPE = {"B": 2, "Q": 100, "C": 256, "M": 100_000}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _inter_inputs(B: int, Q: int, C: int, M: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Scales give logits of a few units, like a trained model's (the focal math costs the same at any scale).
    embed = torch.randn(B, Q, C, generator=g) / C ** 0.5
    memory = torch.randn(M, C, generator=g)
    return embed, memory


def _inter_variants(embed: torch.Tensor, memory: torch.Tensor) -> dict[str, Callable[[], None]]:
    """name -> one forward + backward. 'bare' = einsum forward + its backward with a precomputed upstream
    gradient (the floor: the two matmuls any implementation needs)."""
    upstream = torch.randn(embed.shape[0], embed.shape[1], memory.shape[0])

    def bare() -> None:
        e = embed.detach().requires_grad_()
        torch.einsum("bqc,mc->bqm", e, memory).backward(upstream)

    def fused(compiled: bool) -> Callable[[], None]:
        def run() -> None:
            K.set_compile(compiled)
            e = embed.detach().requires_grad_()
            K.inter_mask_loss(e, memory).backward()
        return run

    def naive() -> None:
        e = embed.detach().requires_grad_()
        K.inter_mask_loss_reference(e, memory).backward()

    return {"bare": bare, "fused_eager": fused(False), "fused_compiled": fused(True), "naive": naive}


def _peak_extra_mb(variant: str) -> float:
    """Run one variant after a warm-up; peak RSS above the RSS just before it (MB = 10^6 bytes), from
    /proc/self/status (writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS)."""
    embed, memory = _inter_inputs(**INTER_SHAPE)
    fn = _inter_variants(embed, memory)[variant]
    fn()                                                  # warm-up (and compilation) outside the window

    def status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) -> MB
        raise KeyError(key)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                      # reset VmHWM to the current RSS
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def _memory_in_subprocess(variant: str) -> float | None:
    """Peak extra memory of `variant` in a FRESH interpreter (no allocator state from the timing runs)."""
    code = f"from iuq_lite.bench import _peak_extra_mb; print(_peak_extra_mb({variant!r}))"
    try:
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             timeout=900,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return round(float(out.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as exc:
        _log(f"memory measurement of {variant} failed: {exc}")
        return None


def _alternating(fns: dict[str, Callable[[], None]], runs: int, naive_runs: int) -> dict[str, float]:
    """Median ms of each fn over `runs` rounds, the fns alternating within a round ('naive': naive_runs)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(runs):
        for name, fn in fns.items():
            if name == "naive" and r >= naive_runs:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        _log(f"[{torch.get_num_threads()} threads] run {r + 1}/{runs}: "
             + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items() if len(v) == r + 1))
    return {k: statistics.median(v) * 1e3 for k, v in times.items() if v}


def bench_inter_loss(runs: int = 7, naive_runs: int = 3) -> dict:
    """Forward + backward of inter_mask_loss at B=2, Q=100, C=256, M=100k (fp32, CPU, memory detached)
    against the bare einsum forward + backward: median of `runs` alternating runs after warm-up; targets
    time ratio <= 1.3 and peak extra memory <= 2 x one [B,Q,M] fp32 tensor (measured in fresh processes).
    The naive version (einsum + torchvision sigmoid_focal_loss) is printed beside it."""
    torch.manual_seed(0)
    s = INTER_SHAPE
    embed, memory = _inter_inputs(**s)
    fns = _inter_variants(embed, memory)
    # agreement of the three implementations (forward and gradient), on this very problem
    grads, losses, warm_s = {}, {}, {}
    for name, compiled in (("fused_eager", False), ("fused_compiled", True), ("naive", None)):
        e = embed.detach().requires_grad_()
        K.set_compile(bool(compiled))
        t0 = time.perf_counter()
        loss = K.inter_mask_loss_reference(e, memory) if compiled is None else K.inter_mask_loss(e, memory)
        loss.backward()
        losses[name], grads[name] = float(loss.detach()), e.grad
        warm_s[name] = round(time.perf_counter() - t0, 2)
        _log(f"warm-up {name}: {warm_s[name]:.1f} s (loss {losses[name]:.6f})")
    compile_ok = not K._COMPILE["failed"]
    fns["bare"]()
    if not compile_ok:
        del fns["fused_compiled"]
    med = _alternating(fns, runs, naive_runs)
    ratio = {k: v / med["bare"] for k, v in med.items()}
    # The same with one thread: no barriers, so load from other processes slows every variant alike; the
    # noise-robust figure on a shared machine (the multi-threaded one is what a quiet machine gives).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        med1 = _alternating({k: v for k, v in fns.items() if k != "naive"}, runs, 0)
    finally:
        torch.set_num_threads(threads)
    ratio1 = {k: v / med1["bare"] for k, v in med1.items()}
    bqm_mb = s["B"] * s["Q"] * s["M"] * 4 / 1e6                  # one [B,Q,M] fp32 tensor: 80 MB
    _log("peak memory in fresh subprocesses ...")
    peak = {k: _memory_in_subprocess(k) for k in fns}
    chosen = "fused_compiled" if compile_ok and ratio.get("fused_compiled", 9e9) < ratio["fused_eager"] \
        else "fused_eager"

    def rel(a: str) -> float:
        return float((grads[a] - grads["naive"]).abs().max() / grads["naive"].abs().max())
    r1, r3 = (lambda d: {k: round(v, 1) for k, v in d.items()}), (lambda d: {k: round(v, 3) for k, v in d.items()})
    return {"benchmark": "inter-loss", **s, "dtype": "float32", "device": "cpu", "threads": threads,
            "load_avg_1min": os.getloadavg()[0], "runs": runs, "median_ms": r1(med), "ratio_to_bare": r3(ratio),
            "median_ms_1_thread": r1(med1), "ratio_to_bare_1_thread": r3(ratio1), "compile_available": compile_ok,
            "first_call_s": warm_s, "chosen": chosen, "default_path": "fused_compiled" if compile_ok else "fused_eager",
            "peak_extra_mb": peak, "bqm_tensor_mb": round(bqm_mb, 1), "loss": {k: round(v, 7) for k, v in losses.items()},
            "max_rel_grad_err_vs_naive": {k: rel(k) for k in ("fused_eager", "fused_compiled")},
            "targets": {"time_ratio": 1.3, "peak_extra_mb": round(2 * bqm_mb, 1)},
            "tile_elements": {"eager": K.CPU_TILE_ELEMENTS, "compiled": K.COMPILED_TILE_ELEMENTS},
            "pass": {"time": ratio[chosen] <= 1.3, "memory": peak.get(chosen) is not None and peak[chosen] <= 2 * bqm_mb,
                     **{f"time_{k}": ratio[k] <= 1.3 for k in ("fused_eager", "fused_compiled") if k in ratio},
                     "time_1_thread": ratio1[chosen] <= 1.3}}




# ------------------------------------------------------------------------------------ training step / infer
def _step_setup(cfg: Config, *, device: torch.device = torch.device("cpu"), data: Iterator | None = None,
                mask_dim: int | None = None) -> tuple[Callable[[], None], IUQCriterion]:
    """One training step of `cfg` as train() runs it (both views in one forward, channels_last / compile /
    bf16 autocast / grad clip per cfg.train) on `data` (default: the preset's training stream, held in memory
    as after the first epoch); returns (step, its criterion)."""
    torch.manual_seed(0)
    if data is None:
        train_ds, _ = build_datasets(cfg.data)
        for i in range(len(train_ds) if train_ds._cache is not None else 0):
            train_ds[i]               # steady state: after the first epoch every item comes from memory
        data = batches(train_ds, batch_size=cfg.train.batch_size, seed=0, start_step=0)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=fmt)
    fwd = TwoViews(torch.compile(model) if cfg.train.compile else model)
    crit = IUQCriterion(build_criterion(cfg).to(device), cfg.iuq, adapter=iuq_adapter(model), seed=0,
                        mask_dim=mask_dim).to(device)
    opt, state = build_optimizer(model, cfg), {"step": 0}

    def step() -> None:
        images, targets = next(data)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp and device.type == "cuda"):
            losses = crit(fwd, images.contiguous(memory_format=fmt), targets, step=state["step"])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        crit.after_step()
        state["step"] += 1
    return step, crit


def bench_step(steps: int = 10, rounds: int = 4, preset: str = "shapes", warmup: int = 50,
               study: str | None = None) -> dict:
    """Training step time of a baseline preset (`shapes`): baseline vs inter-only vs full IUQ (METHOD §5);
    with `study`, of every row of studies.STUDIES[study] instead (e.g. "capacity": Table S4's step times).

    Rounds alternate the variants (each `steps` steps after a warm-up that also fills the pixel memory), so
    load from other processes hits every variant alike; median seconds per step over rounds. Ratios are
    relative to the first variant.
    """
    if study is None:
        variants = {"baseline": (preset, {}), "inter-only": (preset, {"iuq.inter.enabled": True}),
                    "equi-only": (preset, {"iuq.equi.enabled": True}),
                    "full IUQ": (preset, {"iuq.inter.enabled": True, "iuq.equi.enabled": True})}
    else:
        variants = {row: (p, over) for row, p, over, _ in STUDIES[study]}
    fns = {name: _step_setup(from_preset(*pre_over))[0] for name, pre_over in variants.items()}
    for name, fn in fns.items():      # warm-up; the memory reaches capacity (20k px) after ~40 steps
        _log(f"warm-up {name}")
        for _ in range(warmup if variants[name][1] else 5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
        _log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = next(iter(med.values()))
    out = {"preset": preset if study is None else f"study {study}", "threads": torch.get_num_threads(),
           "step_s": {k: round(v, 4) for k, v in med.items()},
           "ratio_vs_baseline": {k: round(v / base, 3) for k, v in med.items()}}
    if study is None:
        out.update(inter_only_target=1.10, inter_only_ok=med["inter-only"] / base <= 1.10)
    return out


def bench_infer(shapes_batches: int = 10, coco_runs: int = 3) -> dict:
    """Inference images/s: the `shapes` model (batch 8, 128 px, forward + post-processing) and the `coco_r50`
    model on one 800x1333 image (padded to 800x1344), CPU fp32, random weights (speed does not depend on them)."""
    out = {"threads": torch.get_num_threads()}
    for preset, shape, runs in (("shapes", (8, 3, 128, 128), shapes_batches),
                                ("coco_r50", (1, 3, 800, 1344), coco_runs)):
        torch.manual_seed(0)
        cfg = from_preset(preset, {"model.pretrained": None})
        model = build_model(cfg).eval()
        x = torch.rand(shape)
        sizes = [(shape[2], shape[3])] * shape[0]
        with torch.inference_mode():
            postprocess(model(x), sizes, topk=cfg.model.test_topk)          # warm-up
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                postprocess(model(x), sizes, topk=cfg.model.test_topk)
                ts.append(time.perf_counter() - t0)
        ips = shape[0] / statistics.median(ts)
        _log(f"{preset}: {ips:.2f} images/s")
        out[preset] = {"images_per_s": round(ips, 2), "input": list(shape),
                       "median_s_per_batch": round(statistics.median(ts), 4)}
    return out


# ------------------------------------------------------------------------------------------------ gpu
def _fake_batches(n: int, B: int, size: int, num_classes: int, device: torch.device) -> list:
    """n batches of random images [B,3,size,size] with 3-12 random box instances each (COCO-like targets)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        targets = []
        for b in range(B):
            k = int(torch.randint(3, 13, (), generator=g))
            masks = torch.zeros(k, size, size, dtype=torch.bool)
            for m, (y, x, h, w) in zip(masks, torch.randint(size // 16, size // 2, (k, 4), generator=g).tolist()):
                m[y:y + h, x:x + w] = True
            targets.append({"image_id": i * B + b, "labels": torch.randint(num_classes, (k,), generator=g),
                            "masks": masks.to(device), "iscrowd": torch.zeros(k, dtype=torch.bool, device=device),
                            "size": torch.tensor([size, size])})
        out.append((torch.rand(B, 3, size, size, generator=g).to(device), targets))
    return out


def gpu_step_figures(preset: str, *, device: torch.device, batch: int = 2, size: int = 1024, steps: int = 20,
                     warmup: int = 5, overrides: dict | None = None) -> dict:
    """Training steps of `preset` (random init, as _step_setup: bf16 autocast per train.amp) on random images:
    images/s and peak memory. The pixel memory starts FULL (random features): the steady state of a long run."""
    cfg = from_preset(preset, {"model.pretrained": None, **(overrides or {})})
    step, crit = _step_setup(cfg, device=device, mask_dim=cfg.model.mask_dim,
                             data=itertools.cycle(_fake_batches(4, batch, size, cfg.model.num_classes, device)))
    n = crit.memory.capacity
    crit.memory.push_sampled({"features": torch.randn(n, cfg.model.mask_dim, device=device),
                              "labels": torch.randint(cfg.model.num_classes, (n,), device=device),
                              "image_ids": torch.full((n,), -1, device=device),
                              "positions": torch.rand(n, 2, device=device)})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[warmup:])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    _log(f"{preset}: {step_s:.3f} s/step, {batch / step_s:.2f} images/s, peak {peak} GiB")
    return {"step_s": round(step_s, 4), "images_per_s": round(batch / step_s, 2),
            "peak_gib": None if peak is None else round(peak, 2)}


def bench_gpu() -> dict:
    """coco_r50 vs coco_r50_iuq training on one GPU at COCO resolution (1024x1024 LSJ crops, 2 images = the
    per-GPU batch of the 8-GPU recipe, bf16): images/s/GPU and peak memory; a few minutes on a modern GPU.
    Table S4 (CondInst, 100k px): +5 % time, +5.7 GB. Without CUDA: a message, and exit status 0."""
    if not torch.cuda.is_available():
        msg = "no CUDA device here: `python -m iuq_lite.bench gpu` measures GPU training; run it on a GPU machine"
        _log(msg)
        return {"benchmark": "gpu", "cuda": False, "message": msg}
    dev = torch.device("cuda")
    runs = {p: gpu_step_figures(p, device=dev) for p in ("coco_r50", "coco_r50_iuq")}
    base, ours = runs["coco_r50"], runs["coco_r50_iuq"]
    return {"benchmark": "gpu", "cuda": True, "device": torch.cuda.get_device_name(dev), "batch_per_gpu": 2,
            "size": 1024, **runs, "time_ratio": round(ours["step_s"] / base["step_s"], 3),
            "extra_gib": round(ours["peak_gib"] - base["peak_gib"], 2)}


# ------------------------------------------------------------------------------------------- sample photos
# The over-fit of issue 17: `smoke` with 32 queries on the sample photos' train split, through the COCO data
# path without augmentation (an over-fit memorises; random LSJ crops and flips kept train AP50 near 40 for
# 1,500 steps): photos at their own size (long side <= 500), padded to multiples of 32 with the valid size
# recorded, predictions cropped to it and resized to the photo's size.
SAMPLES_OVERFIT: dict = {"data.augment": False, "model.num_queries": 32, "loss.num_points": 1024,
                         "train.iters": 500, "train.batch_size": 2, "train.lr": 1e-3, "train.warmup_iters": 20,
                         "train.eval_at_end": False, "train.log_every": 50, "train.ckpt_every": 100_000}
DRYRUN_SETS: dict = {"model.pretrained": None, "train.amp": False, "train.batch_size": 1, "train.iters": 2,
                     "train.log_every": 1, "train.eval_at_end": False, "train.device": "cpu", "data.num_workers": 0}


def samples_overfit(*, iters: int | None = None, root: str | Path | None = None, out: str | Path | None = None,
                    threads: int | None = None) -> dict:
    """Train SAMPLES_OVERFIT on the sample train split, then COCO-evaluate on that split. Returns the metrics
    (segm/AP, AP50, ... on 0-100) and iters, train_s, eval_s, threads."""
    if threads:
        torch.set_num_threads(threads)
    root = Path(root or DEFAULT_ROOT)
    cfg = from_preset("smoke", {**SAMPLES_OVERFIT, "data.root": str(root), **({"train.iters": iters} if iters else {})})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = load_model(train(cfg, out=out or tmp, progress=False).checkpoint)
        t1 = time.perf_counter()
        metrics = evaluate(model, CocoInstances(*split_paths(root, "train")), topk=cfg.model.test_topk)
    return {**{k: v for k, v in metrics.items() if "@" not in k}, "iters": cfg.train.iters,
            "train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1),
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}


def bench_samples() -> dict:
    """`python -m iuq_lite.bench samples`: the CPU over-fit on the sample photos (`make samples` first), 2
    threads; targets train-split mask AP50 >= 80 within 10 minutes."""
    out = samples_overfit(threads=2)
    return {"benchmark": "samples", "preset": "smoke", "overrides": SAMPLES_OVERFIT, **out,
            "load_avg_1min": os.getloadavg()[0], "targets": {"segm/AP50": 80, "seconds": 600},
            "pass": {"AP50": out["segm/AP50"] >= 80, "seconds": out["seconds"] <= 600}}


def bench_samples_dryrun(out: str | Path | None = None) -> dict:
    """`python -m iuq_lite.bench samples-dryrun`: DRYRUN_SETS (2 steps, batch 1, CPU, fp32, random init) of
    coco_r50 and coco_r50_iuq on the sample photos, each in a fresh `python -m iuq_lite.train` process:
    seconds per step, peak RSS (MB) and the loss terms of each step; written to results/samples_dryrun.json."""
    sets = {"data.root": str(DEFAULT_ROOT), **DRYRUN_SETS, "train.threads": torch.get_num_threads()}
    runs = []
    for preset in ("coco_r50", "coco_r50_iuq"):
        with tempfile.TemporaryDirectory() as tmp:
            args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
            _log(f"{preset}: {sets['train.iters']} steps ...")
            proc = subprocess.run([sys.executable, "-m", "iuq_lite.train", "--preset", preset, "--out", tmp,
                                   "--no-progress", *args], cwd=ROOT, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise RuntimeError(f"{preset} dry run failed: {proc.stderr.strip()[-2000:]}")
            hist = [json.loads(x) for x in (Path(tmp) / "history.jsonl").read_text().splitlines() if x.strip()]
            man = json.loads((Path(tmp) / "manifest.json").read_text())
        runs.append({"preset": preset, "seed": man["seed"], "overrides": {**sets, "data.root": "data/samples"},
                     "metrics": {}, "num_classes": man["num_classes"], "step_s": [round(1 / h["it_s"], 2) for h in hist],
                     "peak_mb": man["peak_mb"], "losses": [{k: round(v, 4) for k, v in h.items()
                                                            if k.startswith("loss")} for h in hist]})
        _log(f"{preset}: {runs[-1]['step_s']} s/step, peak {runs[-1]['peak_mb']} MB")
    result = {"command": "python -m iuq_lite.bench samples-dryrun", "commit": git_commit(), "device": "cpu",
              "threads": sets["train.threads"], "load_avg_1min": round(os.getloadavg()[0], 2), "runs": runs}
    write_json(result, out or RESULTS / "samples_dryrun.json")
    return result


def dryrun_table(path: str | Path | None = None) -> str:
    """The README's markdown table of results/samples_dryrun.json (a test checks the README holds it)."""
    d = json.loads(Path(path or RESULTS / "samples_dryrun.json").read_text())
    rows = ["| preset | s/step (step 1, 2) | peak RSS MB | losses at step 2 |", "|---|---|---|---|"]
    rows += [f"| {r['preset']} | {', '.join(f'{s:.1f}' for s in r['step_s'])} | {r['peak_mb']:,.0f} | "
             + ", ".join(f"{k[5:]} {v:.2f}" for k, v in r["losses"][-1].items() if k != "loss") + " |"
             for r in d["runs"]]
    return "\n".join(rows)


BENCHMARKS: dict[str, Callable[[], dict]] = {"inter-loss": bench_inter_loss, "step": bench_step,
                                             "infer": bench_infer, "gpu": bench_gpu, "samples": bench_samples,
                                             "samples-dryrun": bench_samples_dryrun}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS or (argv[0] != "step" and len(argv) != 1):
        raise SystemExit(f"usage: python -m iuq_lite.bench NAME   (NAME in: {', '.join(BENCHMARKS)}); "
                         "step also takes --preset P --study S --steps N --rounds R --warmup W")
    if argv[0] == "step":
        p = argparse.ArgumentParser(prog="python -m iuq_lite.bench step")
        p.add_argument("--preset", default="shapes")
        p.add_argument("--study", default=None, help="time every row of this study (studies.STUDIES) instead")
        for name, default in (("steps", 10), ("rounds", 4), ("warmup", 50)):
            p.add_argument(f"--{name}", type=int, default=default)
        print(json.dumps(bench_step(**vars(p.parse_args(argv[1:])))))
        return
    print(json.dumps(BENCHMARKS[argv[0]]()))


if __name__ == "__main__":
    main()
