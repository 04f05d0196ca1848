"""Training: `train(cfg)` for notebooks and tests, `main()` for the command line and torchrun.

Launch commands::

    # one process (CPU or one GPU)
    python -m iuq_lite.train --preset shapes_iuq --out runs/shapes_iuq --set train.seed=1
    # resume after a kill (also automatic when OUT/ckpt holds a checkpoint and --resume is given)
    python -m iuq_lite.train --preset shapes_iuq --out runs/shapes_iuq --resume
    # several GPUs on one node (DDP iff RANK is set; train.batch_size is the GLOBAL batch)
    torchrun --standalone --nproc_per_node=8 -m iuq_lite.train --preset coco_r50_iuq \
        --out runs/coco_r50_iuq --set data.root=/data/coco
    # two nodes: the same on each, with torchrun's rendezvous flags instead of --standalone
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --rdzv-id=iuq ...

One step (METHOD §5): forward I and g(I) -> L_intra -> L_inter (memory + in-batch negatives) -> L_equi
-> backward, step -> enqueue this batch's sampled instance pixels. With IUQ disabled the same loop is the
plain Mask2Former-style baseline. Under DDP every random draw is keyed by (seed, step, image id) and every
loss normaliser is all-reduced, so N processes give one process's losses (tests/test_ddp.py); the model runs
inside `iuq.TwoViews`, so both IUQ forwards (I and g(I)) happen in one DDP forward. train.accum_steps > 1
splits each rank's share of the global batch into micro-batches (DDP no_sync on all but the last).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import math
import resource
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint, utils
from .checkpoint import latest_checkpoint, load_checkpoint, load_model  # noqa: F401 - public via train
from .config import Config, from_preset, to_dict
from .data.coco import ClassCountError, build_datasets, collate, resolve_num_classes
from .data.shapes import ensure_from_config
from .evaluate import evaluate
from .iuq import IUQCriterion, TwoViews
from .model import build_criterion, build_model, iuq_adapter


@dataclass
class TrainResult:
    checkpoint: str                      # OUT/model.pt
    metrics: dict                        # final COCO metrics (0-100), {} when evaluation is off
    history: list = field(default_factory=list)  # logged dicts (step, losses, lr, it/s, ...)
    seconds: float = 0.0
    out: str = ""


# ------------------------------------------------------------------------------------------ pieces
def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; backbone lr x backbone_lr_mult; no weight decay on norms, biases and embeddings. The fused
    implementation: one kernel over all parameters instead of ~10 small ops per tensor (CPU: 9 -> 4 ms per
    step for the shapes model; the same update up to float rounding)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        # Mask2Former: no decay on norms/biases and on learned query / level embeddings
        no_decay = p.ndim <= 1 or any(k in name for k in ("query_feat", "query_embed", "query_pos", "level_embed"))
        groups.setdefault((is_backbone, no_decay), []).append(p)
    t = cfg.train
    param_groups = [{"params": ps, "lr": t.lr * (t.backbone_lr_mult if bb else 1.0),
                     "weight_decay": 0.0 if nd else t.weight_decay} for (bb, nd), ps in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=t.lr, weight_decay=t.weight_decay, fused=True)


def lr_lambda(cfg: Config):
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_iters:
            return (step + 1) / t.warmup_iters
        progress = (step - t.warmup_iters) / max(1, t.iters - t.warmup_iters)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def epoch_indices(n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, chunk: int = 1) -> list[int]:
    """This rank's sample order for an epoch, keyed by (seed, epoch) so resume needs only the step: the shuffled
    order cut into chunks of `chunk` images, chunk c going to rank c % world. With chunk = a micro-batch, the
    ranks' micro-batches of a step, in rank order, are one process's batch in order (DDP == one process)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    usable = n // (chunk * world) * chunk * world
    return [perm[i] for i in range(usable) if (i // chunk) % world == rank]


def batches(dataset, *, batch_size: int, seed: int, start_step: int, num_workers: int = 0, rank: int = 0,
            world: int = 1, accum: int = 1):
    """Infinite iterator of collated micro-batches (images, targets), `accum` per step, each of
    batch_size / (world x accum) images (batch_size is the GLOBAL batch); starts at `start_step` without
    loading skipped data."""
    micro, per_epoch = batch_size // (world * accum), len(dataset) // batch_size
    if per_epoch == 0 or micro == 0 or micro * world * accum != batch_size:
        raise ValueError(f"global batch {batch_size} must be a multiple of world size x accum_steps ({world} x "
                         f"{accum}) and at most the dataset's {len(dataset)} images")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = epoch_indices(len(dataset), seed=seed, epoch=epoch, rank=rank, world=world, chunk=micro)
        order = order[offset * micro * accum: per_epoch * micro * accum]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order), batch_size=micro, shuffle=False,
            num_workers=num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            # its own generator: a DataLoader otherwise draws its worker base seed from the global RNG, which
            # would shift every later random number after a resume; keyed by rank too, so that the ranks'
            # workers do not augment in lockstep
            generator=torch.Generator().manual_seed(utils.step_seed(seed * 100_003 + epoch, rank)))
        yield from loader
        step = (epoch + 1) * per_epoch


def _to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


# -------------------------------------------------------------------------------------------- train
@dataclass
class _Run:
    """One run's state, shared by the steps of `train`: set up by `_setup`, advanced by `_step`."""
    cfg: Config
    out: Path
    device: torch.device
    model: torch.nn.Module               # the bare segmenter: weights, evaluation, state_dict
    train_model: torch.nn.Module         # TwoViews(model), inside DDP and/or torch.compile: what a step calls
    ddp: torch.nn.Module                 # TwoViews(model) or its DDP wrapper (no_sync)
    crit: IUQCriterion
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    train_ds: Any
    val_ds: Any
    t0: float                            # time.time() at the start, less a resumed run's elapsed time: "seconds"
    tb: Any = None                       # TensorBoard writer or None
    history: list = field(default_factory=list)
    step: int = 0
    skipped: int = 0                     # steps dropped for a non-finite loss, in total
    bad_in_row: int = 0                  # ... in a row (train.max_bad_steps stops the run)
    signal: int | None = None            # set by the SIGTERM / SIGINT handler: finish the step, checkpoint, exit
    tick: tuple[float, int] = (0.0, 0)   # (time, step) of the last log record, for it/s


def _setup(cfg: Config, out: Path, resume: bool, t0: float, *, explicit_classes: bool = False) -> _Run:
    """Seed, data, model, criterion, optimiser and schedule (in this order: it fixes every random stream), the
    resume state from OUT/ckpt when `resume`, and the DDP / compile wrappers. A COCO-layout folder's categories
    set model.num_classes (explicit_classes: the caller set it, so a contradiction is an error)."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = utils.pick_device(t.device)
    world, rank, accum = utils.world_size(), utils.rank(), t.accum_steps
    if t.batch_size % (world * accum):
        raise ValueError(f"train.batch_size={t.batch_size} (global) is not divisible by world size {world} x "
                         f"train.accum_steps {accum}")
    out.mkdir(parents=True, exist_ok=True)
    utils.seed_everything(t.seed)

    train_ds, val_ds = build_datasets(cfg.data)
    # a COCO-layout folder's categories decide the class count (recorded in the config and manifest)
    cfg = resolve_num_classes(cfg, train_ds, val_ds, explicit=explicit_classes)
    model = build_model(cfg).to(device)
    if rank:        # augmentation (num_workers=0) draws from the global RNG: one stream per rank, not lockstep
        utils.seed_everything(utils.step_seed(t.seed, rank) % 2**32)   # (DDP broadcasts rank 0's init)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base = build_criterion(cfg).to(device)
    crit = IUQCriterion(base, cfg.iuq, adapter=iuq_adapter(model), seed=t.seed).to(device)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    run = _Run(cfg=cfg, out=out, device=device, model=model, train_model=model, ddp=model, crit=crit, opt=opt,
               sched=sched, train_ds=train_ds, val_ds=val_ds, t0=t0)

    state, ckpt_path = checkpoint.load_resume(out, cfg) if resume else (None, None)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        crit.load_state_dict(state["criterion"])
        checkpoint.restore_rng(state["rng"])
        run.step, run.skipped = state["step"], state["skipped"]
        if (out / "history.jsonl").exists():        # records up to the checkpoint; later ones are redone
            records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
            run.history = [h for h in records if h.get("step", 0) <= run.step]
        # the clock goes on from the checkpoint ("seconds" counts training time, not time since this process
        # began); checkpoints written before it carried the clock: the elapsed time of the history's records
        run.t0 -= state.get("seconds", (elapsed_seconds(run.history) or [0.0])[-1])
        if utils.is_main():
            print(f"resumed from {ckpt_path} at step {run.step}", file=sys.stderr)
    elif utils.is_main():
        (out / "history.jsonl").unlink(missing_ok=True)      # a fresh run: no stale records
    run.train_model = run.ddp = TwoViews(model)   # both IUQ views in one forward (DDP: one forward per backward)
    if utils.is_dist():
        run.train_model = run.ddp = torch.nn.parallel.DistributedDataParallel(
            run.train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        run.train_model = torch.compile(run.train_model)
    run.tb = _tensorboard(out) if utils.is_main() else None
    return run


def _step(run: _Run, micro: list) -> tuple[dict[str, float] | None, bool]:
    """One optimisation step on this rank's micro-batches [(images, targets), ...] (METHOD §5; the IUQ terms are
    in run.crit). Returns (the loss terms, means over ranks summed over micro-batches, or None when the loss was
    non-finite and the step was skipped; whether any rank got a stop signal). A skipped step still advances
    the step and the schedule; max_bad_steps skips in a row write a checkpoint and raise FloatingPointError."""
    t, device, opt = run.cfg.train, run.device, run.opt
    accum = t.accum_steps
    step_targets = [tg for _, targets in micro for tg in targets] if accum > 1 else None
    opt.zero_grad(set_to_none=True)
    total: dict[str, torch.Tensor] = {}
    for i, (images, targets) in enumerate(micro):
        images, targets = images.to(device, non_blocking=True), _to(targets, device)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # DDP all-reduces gradients at the last micro-batch's backward only
        with run.ddp.no_sync() if i < accum - 1 and utils.is_dist() else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda"):
                losses = run.crit(run.train_model, images, targets, step=run.step, step_targets=step_targets)
            sum(losses.values()).backward()       # a non-finite loss is dropped below, on every rank
        total = {k: total.get(k, 0) + v.detach().float() for k, v in losses.items()}
    # one all-reduce: the logged losses (mean over ranks), a non-finite loss anywhere, a signal anywhere
    flags = utils.all_reduce_mean(torch.stack([*total.values(), torch.tensor(
        float(run.signal is not None), device=device)]))
    stopping, terms = bool(flags[-1] > 0), dict(zip(total, flags[:-1].tolist()))
    loss = sum(terms.values())
    if not math.isfinite(loss):
        run.bad_in_row += 1
        run.skipped += 1
        opt.zero_grad(set_to_none=True)
        run.crit.after_step(push=False)
        print(f"warning: non-finite loss at step {run.step} (skipped {run.skipped} so far)", file=sys.stderr)
        if run.bad_in_row >= t.max_bad_steps:
            _save_checkpoint(run)
            raise FloatingPointError(f"{run.bad_in_row} non-finite losses in a row at step {run.step}; "
                                     f"checkpoint saved in {run.out / 'ckpt'}")
        run.step += 1
        run.sched.step()
        return None, stopping
    run.bad_in_row = 0
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    opt.step()
    run.sched.step()
    run.crit.after_step()
    run.step += 1
    return terms, stopping


def _save_checkpoint(run: _Run) -> None:
    """OUT/ckpt/iter_<step>.pt (resume state, DESIGN §4) and OUT/history.jsonl. Called on every rank: the RNG
    states are gathered; rank 0 writes."""
    rng = checkpoint.rank_states(run.crit.memory)
    if utils.is_main():
        checkpoint.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                         "scheduler": run.sched.state_dict(), "criterion": run.crit.state_dict(), "rng": rng,
                         "step": run.step, "skipped": run.skipped, "seconds": time.time() - run.t0,
                         "config": to_dict(run.cfg)}, run.out, run.step,
                        keep_last=run.cfg.train.keep_last)
        with open(run.out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in run.history)


def _log_step(run: _Run, terms: dict[str, float]) -> dict:
    """Record the step's losses, lr and speed (history, OUT/history.jsonl, TensorBoard); returns the record."""
    now = time.time()
    tick, tick_step = run.tick
    rec = {"step": run.step, "loss": sum(terms.values()), "lr": run.opt.param_groups[0]["lr"],
           "it_s": (run.step - tick_step) / max(now - tick, 1e-9), "seconds": now - run.t0,
           **{k: v for k, v in terms.items() if not k[-1].isdigit()}}
    run.tick = (now, run.step)
    _log_record(run.history, rec, run.out, run.tb)
    return rec


def _evaluate_midway(run: _Run) -> None:
    """The learning curve: evaluate on train.eval_images val images and record it; the training RNG stream and
    the model's train mode are left as they were."""
    with torch.random.fork_rng(devices=[]):    # evaluating must not shift the training RNG stream
        _log_record(run.history, {"step": run.step, "seconds": time.time() - run.t0,
                                  **_evaluate(run.model, run.val_ds, run.cfg, limit=run.cfg.train.eval_images)},
                    run.out, run.tb)
    run.model.train()


def _finish(run: _Run, overrides: dict | None) -> TrainResult:
    """Final evaluation (train.eval_at_end), OUT/model.pt and OUT/manifest.json (rank 0); the TrainResult."""
    cfg, t, out, model = run.cfg, run.cfg.train, run.out, run.model
    device, skipped, history = run.device, run.skipped, run.history
    metrics: dict = {}
    if t.eval_at_end and utils.is_main():
        metrics = _evaluate(model, run.val_ds, cfg)
    seconds = time.time() - run.t0
    model_path = out / "model.pt"
    if utils.is_main():
        utils.atomic_save({"model": model.state_dict(), "config": to_dict(cfg)}, model_path)
        manifest = {"preset": cfg.preset, "overrides": _jsonable(overrides or {}), "seed": t.seed,
                    "commit": utils.git_commit(), "dirty": utils.git_dirty(), "data_sha256": _data_sha(cfg),
                    "metrics": metrics, "seconds": seconds, "iters": t.iters, "num_classes": cfg.model.num_classes,
                    "skipped_steps": skipped, "peak_mb": _peak_mb(device),
                    "model_sha256": utils.sha256_file(model_path), "config": to_dict(cfg)}
        utils.write_json(manifest, out / "manifest.json")      # history.jsonl was written by _save_checkpoint()
    return TrainResult(checkpoint=str(model_path), metrics=metrics, history=history, seconds=seconds,
                       out=str(out))


def train(cfg: Config, *, out: str | Path | None = None, resume: bool = False, overrides: dict | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train `cfg` into the run folder `out` (default runs/<preset>), evaluate, and return a TrainResult.

    Writes OUT/model.pt ({"model": state_dict, "config": plain dict}), OUT/manifest.json, OUT/history.jsonl and
    resumable OUT/ckpt/iter_NNNNNNN.pt (DESIGN §4). `overrides` is only recorded in the manifest.
    `stop_after=N` stops at step N exactly as a kill would (checkpoint written, no model.pt); resume=True then
    continues from OUT/ckpt with identical results to an uninterrupted run. History losses are the means
    over ranks (under DDP), summed over micro-batches.
    Steps: `_setup` -> per step `_step`, then `_log_step` / `_evaluate_midway` / `_save_checkpoint` on their
    cadences -> `_finish` (final evaluation, model.pt, manifest).
    """
    t0 = time.time()
    t = cfg.train
    run = _setup(cfg, Path(out or f"runs/{cfg.preset}"), resume, t0,
                 explicit_classes="model.num_classes" in (overrides or {}))

    def on_signal(signum, frame):      # finish the step, write a checkpoint, exit
        run.signal = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
        if utils.in_main_thread() else {}

    data = batches(run.train_ds, batch_size=t.batch_size, seed=t.seed, start_step=run.step,
                   num_workers=cfg.data.num_workers, rank=utils.rank(), world=utils.world_size(), accum=t.accum_steps)
    bar = tqdm(total=t.iters, initial=run.step, disable=not (progress and utils.is_main()), file=sys.stderr,
               dynamic_ncols=True, mininterval=2.0)
    run.model.train()
    run.tick, stopping = (time.time(), run.step), False
    try:
        while run.step < min(t.iters, stop_after or t.iters) and not stopping:
            terms, stopping = _step(run, [next(data) for _ in range(t.accum_steps)])
            if terms is None:
                continue
            bar.update(1)
            if run.step % t.log_every == 0 or run.step == t.iters:
                rec = _log_step(run, terms)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
            if t.eval_every and run.step % t.eval_every == 0 and run.step < t.iters and utils.is_main():
                _evaluate_midway(run)
            if run.step % t.ckpt_every == 0:               # a signal's checkpoint is written after the loop
                _save_checkpoint(run)
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if run.tb is not None:
            run.tb.close()
    if stopping:
        if run.step % t.ckpt_every:
            _save_checkpoint(run)
        raise KeyboardInterrupt(f"stopped by a signal at step {run.step}; resume with --resume")
    if run.step % t.ckpt_every:                      # else the loop has just written this step's checkpoint
        _save_checkpoint(run)
    if run.step < t.iters:         # stop_after: interrupted on purpose
        return TrainResult(checkpoint=str(latest_checkpoint(run.out)), metrics={}, history=run.history,
                           seconds=time.time() - run.t0, out=str(run.out))
    return _finish(run, overrides)


def elapsed_seconds(history: list[dict]) -> list[float]:
    """Each history record's training time since the run began ("seconds"), across resumes. Since the checkpoint
    carries the clock, this is just the records' "seconds"; runs resumed before that restarted the clock at
    each resume: a drop marks one, and the records after it are offset by the record before it (the
    checkpoint's own step: ckpt_every is a multiple of log_every), so redone steps are not counted twice."""
    out, offset, prev = [], 0.0, 0.0
    for h in history:
        if h["seconds"] < prev:
            offset += prev
        prev = h["seconds"]
        out.append(offset + prev)
    return out


def _log_record(history: list, rec: dict, out: Path, tb=None) -> None:
    """Keep a history record and append it to OUT/history.jsonl at once (rewritten whole at checkpoints); also
    to TensorBoard when it is installed."""
    history.append(rec)
    if utils.is_main():
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
    for k, v in rec.items() if tb is not None else ():
        if k != "step" and isinstance(v, (int, float)):
            tb.add_scalar(k, v, rec["step"])


def _tensorboard(out: Path):
    """A SummaryWriter on OUT/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _evaluate(model, dataset, cfg: Config, limit: int = 0) -> dict:
    """COCO metrics on the whole dataset, or on its first `limit` images (a shallow copy, shorter id list)."""
    if limit and limit < len(dataset):
        dataset = copy.copy(dataset)
        dataset.ids = list(dataset.ids[:limit])
    return evaluate(model, dataset, topk=cfg.model.test_topk)


def _data_sha(cfg: Config) -> str | None:
    return None if cfg.data.root is not None else utils.sha256_file(ensure_from_config(cfg.data)["train_ann"])


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _peak_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else peak RSS (ru_maxrss is KiB on Linux)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------------- CLI
def parse_sets(items: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=[1,2]', 'd=text'] -> {'a.b': 1, 'c': [1, 2], 'd': 'text'} (Python literals, else str)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = parse_sets(args.sets)
    cfg = from_preset(args.preset, overrides)
    gpu = utils.init_distributed()
    if gpu is not None:
        cfg = replace(cfg, train=replace(cfg.train, device=str(gpu)))
    try:
        result = train(cfg, out=args.out, resume=args.resume, overrides=overrides, progress=not args.no_progress)
    except ClassCountError as e:                   # before the first step: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    if utils.is_main():
        print(json.dumps({"checkpoint": result.checkpoint, "metrics": result.metrics,
                          "seconds": round(result.seconds, 1)}))
    if utils.is_dist():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
