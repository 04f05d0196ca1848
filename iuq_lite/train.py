"""Training: `train(cfg)` for notebooks and tests, `main()` for the command line and torchrun.

Launch commands::

    # one process (CPU or one GPU)
    python -m iuq_lite.train --preset shapes_iuq --out runs/shapes_iuq --set train.seed=1
    # resume after a kill (also automatic when OUT/ckpt holds a checkpoint and --resume is given)
    python -m iuq_lite.train --preset shapes_iuq --out runs/shapes_iuq --resume
    # several GPUs on one node (DDP iff RANK is set; train.batch_size is the GLOBAL batch)
    torchrun --standalone --nproc_per_node=8 -m iuq_lite.train --preset coco_r50_iuq \
        --out runs/coco_r50_iuq --set data.root=/data/coco

One step (METHOD §5): forward I -> L_intra -> L_inter (memory + in-batch negatives) -> forward g(I) -> L_equi
-> backward, step -> enqueue this batch's sampled instance pixels. With IUQ disabled the same loop is the
plain Mask2Former-style baseline.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import utils
from .config import Config, from_dict, from_preset, to_dict


@dataclass
class TrainResult:
    checkpoint: str                      # OUT/model.pt
    metrics: dict                        # final COCO metrics (0-100), {} when evaluation is off
    history: list = field(default_factory=list)  # logged dicts (step, losses, lr, it/s, ...)
    seconds: float = 0.0
    out: str = ""


# ------------------------------------------------------------------------------------------ pieces
def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; backbone lr x backbone_lr_mult; no weight decay on norms, biases and embeddings."""
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
    return torch.optim.AdamW(param_groups, lr=t.lr, weight_decay=t.weight_decay)


def lr_lambda(cfg: Config):
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_iters:
            return (step + 1) / t.warmup_iters
        progress = (step - t.warmup_iters) / max(1, t.iters - t.warmup_iters)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def epoch_indices(n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's shuffled sample order for an epoch: keyed by (seed, epoch), so resume needs only the step."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = len(perm) // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


def batches(dataset, *, batch_size: int, seed: int, start_step: int, num_workers: int = 0, rank: int = 0,
            world: int = 1):
    """Infinite iterator of collated (images, targets); starts at `start_step` without loading skipped data."""
    from .data.coco import collate
    per_epoch = (len(dataset) // world) // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {len(dataset)} images is smaller than one batch ({batch_size} x {world})")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = epoch_indices(len(dataset), seed=seed, epoch=epoch, rank=rank, world=world)
        order = order[offset * batch_size: per_epoch * batch_size]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            # its own generator: a DataLoader otherwise draws its worker base seed from the global RNG, which
            # would shift every later random number after a resume
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for batch in loader:
            yield batch
            step += 1


def _to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "ckpt").glob("iter_*.pt"))
    return ckpts[-1] if ckpts else None


# -------------------------------------------------------------------------------------------- train
def train(cfg: Config, *, out: str | Path | None = None, resume: bool = False, overrides: dict | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train `cfg` into the run folder `out` (default runs/<preset>), evaluate, and return a TrainResult.

    Writes OUT/model.pt ({"model": state_dict, "config": plain dict}), OUT/manifest.json, OUT/history.jsonl and
    resumable OUT/ckpt/iter_NNNNNNN.pt (DESIGN §4). `overrides` is only recorded in the manifest.
    `stop_after=N` stops at step N exactly as a kill would (checkpoint written, no model.pt); resume=True then
    continues from OUT/ckpt with identical results to an uninterrupted run.
    """
    from tqdm.auto import tqdm

    from .data.coco import build_datasets
    from .iuq import IUQCriterion
    from .model import build_criterion, build_model, iuq_adapter

    t0 = time.time()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = utils.pick_device(t.device)
    world, rank = utils.world_size(), utils.rank()
    if t.batch_size % world:
        raise ValueError(f"train.batch_size={t.batch_size} (global) is not divisible by world size {world}")
    out = Path(out or f"runs/{cfg.preset}")
    out.mkdir(parents=True, exist_ok=True)
    utils.seed_everything(t.seed)

    train_ds, val_ds = build_datasets(cfg.data)
    model = build_model(cfg).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base = build_criterion(cfg).to(device)
    crit = IUQCriterion(base, cfg.iuq, adapter=iuq_adapter(model), seed=t.seed).to(device)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))

    step, bad_in_row, skipped = 0, 0, 0
    history: list[dict] = []
    ckpt_path = latest_checkpoint(out) if resume else None
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["config"] != to_dict(cfg):
            raise ValueError(f"checkpoint {ckpt_path} was written for a different config (preset "
                             f"{state['config'].get('preset')!r}); use another --out or the same settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        crit.load_state_dict(state["criterion"])
        utils.set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        step, skipped = state["step"], state["skipped"]
        if (out / "history.jsonl").exists():        # records up to the checkpoint; later ones are redone
            records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
            history = [h for h in records if h.get("step", 0) <= step]
        if utils.is_main():
            print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    elif utils.is_main():
        (out / "history.jsonl").unlink(missing_ok=True)      # a fresh run: no stale records
    train_model = model
    if utils.is_dist():
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    stop = {"signal": None}

    def on_signal(signum, frame):      # finish the step, write a checkpoint, exit
        stop["signal"] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
        if utils.in_main_thread() else {}

    def save_ckpt() -> None:
        if not utils.is_main():
            return
        utils.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "criterion": crit.state_dict(),
                           "rng": utils.rng_state(), "step": step, "skipped": skipped, "config": to_dict(cfg)},
                          out / "ckpt" / f"iter_{step:07d}.pt")
        for old in sorted((out / "ckpt").glob("iter_*.pt"))[:-t.keep_last]:
            old.unlink()
        with open(out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)

    data = batches(train_ds, batch_size=t.batch_size // world, seed=t.seed, start_step=step,
                   num_workers=cfg.data.num_workers, rank=rank, world=world)
    bar = tqdm(total=t.iters, initial=step, disable=not (progress and utils.is_main()), file=sys.stderr,
               dynamic_ncols=True, mininterval=2.0)
    model.train()
    tick, tick_step = time.time(), step
    try:
        while step < min(t.iters, stop_after or t.iters) and stop["signal"] is None:
            images, targets = next(data)
            images, targets = images.to(device, non_blocking=True), _to(targets, device)
            if t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda"):
                losses = crit(train_model, images, targets, step=step)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                bad_in_row += 1
                skipped += 1
                opt.zero_grad(set_to_none=True)
                print(f"warning: non-finite loss at step {step} (skipped {skipped} so far)", file=sys.stderr)
                if bad_in_row >= t.max_bad_steps:
                    save_ckpt()
                    raise FloatingPointError(f"{bad_in_row} non-finite losses in a row at step {step}; "
                                             f"checkpoint saved in {out / 'ckpt'}")
                step += 1
                sched.step()
                continue
            bad_in_row = 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            crit.after_step()
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.iters:
                now = time.time()
                rec = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                       "it_s": (step - tick_step) / max(now - tick, 1e-9), "seconds": now - t0,
                       **{k: v.item() for k, v in losses.items() if not k[-1].isdigit()}}
                tick, tick_step = now, step
                _log_record(history, rec, out)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
            if t.eval_every and step % t.eval_every == 0 and step < t.iters and utils.is_main():
                with torch.random.fork_rng(devices=[]):    # evaluating must not shift the training RNG stream
                    _log_record(history, {"step": step, "seconds": time.time() - t0,
                                          **_evaluate(model, val_ds, cfg, limit=t.eval_images)}, out)
                model.train()
            if step % t.ckpt_every == 0:               # a signal's checkpoint is written after the loop
                save_ckpt()
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if stop["signal"] is not None:
        save_ckpt()
        raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {step}; resume with --resume")
    if step % t.ckpt_every:                          # else the loop has just written this step's checkpoint
        save_ckpt()
    if step < t.iters:             # stop_after: interrupted on purpose
        return TrainResult(checkpoint=str(latest_checkpoint(out)), metrics={}, history=history,
                           seconds=time.time() - t0, out=str(out))

    metrics: dict = {}
    if t.eval_at_end and utils.is_main():
        metrics = _evaluate(model, val_ds, cfg)
    seconds = time.time() - t0
    model_path = out / "model.pt"
    if utils.is_main():
        utils.atomic_save({"model": model.state_dict(), "config": to_dict(cfg)}, model_path)
        manifest = {"preset": cfg.preset, "overrides": _jsonable(overrides or {}), "seed": t.seed,
                    "commit": utils.git_commit(), "data_sha256": _data_sha(cfg), "metrics": metrics,
                    "seconds": seconds, "iters": t.iters, "skipped_steps": skipped, "peak_mb": _peak_mb(device),
                    "model_sha256": utils.sha256_file(model_path), "config": to_dict(cfg)}
        utils.write_json(manifest, out / "manifest.json")      # history.jsonl was written by save_ckpt()
    return TrainResult(checkpoint=str(model_path), metrics=metrics, history=history, seconds=seconds,
                       out=str(out))


def _log_record(history: list, rec: dict, out: Path) -> None:
    """Keep a history record and append it to OUT/history.jsonl at once (rewritten whole at checkpoints)."""
    history.append(rec)
    if utils.is_main():
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def _evaluate(model, dataset, cfg: Config, limit: int = 0) -> dict:
    from .evaluate import evaluate
    if limit and limit < len(dataset):
        dataset = _head(dataset, limit)
    return evaluate(model, dataset, topk=cfg.model.test_topk)


def _head(dataset, n: int):
    """The first n images of a CocoInstances (a shallow copy with a shorter id list)."""
    import copy
    ds = copy.copy(dataset)
    ds.ids = list(dataset.ids[:n])
    return ds


def _data_sha(cfg: Config) -> str | None:
    if cfg.data.root is not None:
        return None
    from .data.shapes import ensure_from_config
    return utils.sha256_file(ensure_from_config(cfg.data)["train_ann"])


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _peak_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else peak RSS (ru_maxrss is KiB on Linux)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_model(path: str | Path, *, device: str = "cpu") -> tuple[torch.nn.Module, Config]:
    """Rebuild a model from OUT/model.pt (weights_only load, strict), in eval mode."""
    from .model import build_model
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run `make reproduce` or train first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(state["config"])
    model = build_model(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    return model.to(device).eval(), cfg


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, Config, dict]:
    """A committed checkpoint (checkpoints/<name>/model.pt, relative paths from the project root) with its
    manifest, loaded strictly: the weights' sha256 and config must match the manifest (notebooks never retrain)."""
    from .experiments import ROOT
    path = ROOT / path
    model, cfg = load_model(path)                   # FileNotFoundError names the path: run `make reproduce`
    manifest = json.loads((path.parent / "manifest.json").read_text())
    if utils.sha256_file(path) != manifest["model_sha256"] or manifest["config"] != to_dict(cfg):
        raise ValueError(f"{path} does not match {path.parent / 'manifest.json'} (sha256 or config)")
    return model, cfg, manifest


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
    result = train(cfg, out=args.out, resume=args.resume, overrides=overrides, progress=not args.no_progress)
    if utils.is_main():
        print(json.dumps({"checkpoint": result.checkpoint, "metrics": result.metrics,
                          "seconds": round(result.seconds, 1)}))
    if utils.is_dist():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
