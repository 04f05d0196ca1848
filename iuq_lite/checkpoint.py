"""Run checkpoints (DESIGN §4): atomic writes, keep-last-k, resuming from the newest loadable one, loading models.

    OUT/ckpt/iter_NNNNNNN.pt   resume state, written by `save` (temp file + rename: a kill mid-write leaves
                               only a stray `iter_*.pt.*.tmp`, never a torn checkpoint)
    OUT/model.pt               final weights + config, read by `load_model` (and `load_checkpoint` for the
                               committed ones, strictly against their manifest)

Everything is tensors, dicts, lists and plain numbers, so `torch.load(..., weights_only=True)` reads it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch

from . import utils
from .config import Config, from_dict, to_dict
from .model import build_model


def checkpoints(out: str | Path) -> list[Path]:
    """OUT/ckpt/iter_*.pt, oldest first (temp files of an interrupted write end in .tmp and are not listed)."""
    return sorted((Path(out) / "ckpt").glob("iter_*.pt"))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def save(state: dict, out: str | Path, step: int, *, keep_last: int) -> Path:
    """Write OUT/ckpt/iter_{step}.pt atomically, then drop all but the newest keep_last and stray temp files."""
    path = utils.atomic_save(state, Path(out) / "ckpt" / f"iter_{step:07d}.pt")
    for old in checkpoints(out)[:-keep_last]:
        old.unlink()
    for tmp in (Path(out) / "ckpt").glob("iter_*.tmp"):     # left by a kill during an earlier write
        tmp.unlink(missing_ok=True)
    return path


def load_resume(out: str | Path, cfg: Config) -> tuple[dict | None, Path | None]:
    """(state, path) of the newest LOADABLE checkpoint in OUT/ckpt, or (None, None) when there is none.

    A corrupt or truncated file is skipped with a warning naming it, and the previous checkpoint is used;
    a checkpoint written for another config (preset, model, ...) raises ValueError.
    """
    for path in reversed(checkpoints(out)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all mean "unusable"
            warnings.warn(f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                          "trying the previous one", RuntimeWarning, stacklevel=2)
            continue
        if state.get("config") != to_dict(cfg):
            raise ValueError(f"checkpoint {path} was written for a different config (preset "
                             f"{state.get('config', {}).get('preset')!r}); use another --out or the same settings")
        return state, path
    if checkpoints(out):
        print(f"warning: no loadable checkpoint in {Path(out) / 'ckpt'}; starting from scratch", file=sys.stderr)
    return None, None


def rank_states(memory) -> list[dict] | dict:
    """Every rank's RNG state (a list under DDP, rank 0's dict otherwise), checking on the way that every rank
    holds the same pixel memory (METHOD §3: pushes are all-gathered); a difference is a bug, so it raises."""
    if not utils.is_dist():
        return utils.rng_state()
    digest = None if memory is None else hashlib.sha256(memory.features.cpu().numpy().tobytes()).hexdigest()
    gathered: list = [None] * utils.world_size()
    torch.distributed.all_gather_object(gathered, {"rng": utils.rng_state(), "memory": digest})
    if len({g["memory"] for g in gathered}) > 1:
        raise RuntimeError(f"the pixel memory differs across ranks (sha256 {[g['memory'] for g in gathered]})")
    return [g["rng"] for g in gathered]


def restore_rng(rng: list[dict] | dict) -> None:
    """Set this rank's RNG state from `rank_states` output (rank 0's when the world size has grown)."""
    if isinstance(rng, list):
        rng = rng[utils.rank()] if utils.rank() < len(rng) else rng[0]
    utils.set_rng_state(rng)


def load_model(path: str | Path, *, device: str = "cpu") -> tuple[torch.nn.Module, Config]:
    """Rebuild a model from OUT/model.pt (weights_only load, strict), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run `make reproduce` or train first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(state["config"])
    model = build_model(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    return model.to(device).eval(), cfg


def load_checkpoint(path: str | Path, *, root: str | Path | None = None) -> tuple[torch.nn.Module, Config, dict]:
    """A committed checkpoint (checkpoints/<name>/model.pt) with its manifest, loaded strictly: the weights'
    sha256 and config must match the manifest (notebooks never retrain). A relative `path` is taken relative
    to `root` when given (notebooks pass the repository root, iuq.studies.ROOT), else to the working
    directory."""
    path = Path(path) if root is None else Path(root) / path
    model, cfg = load_model(path)                   # FileNotFoundError names the path: run `make reproduce`
    manifest = json.loads((path.parent / "manifest.json").read_text())
    # configs compared with defaults filled in: a checkpoint stays loadable when later versions add config keys
    if utils.sha256_file(path) != manifest["model_sha256"] or to_dict(from_dict(manifest["config"])) != to_dict(cfg):
        raise ValueError(f"{path} does not match {path.parent / 'manifest.json'} (sha256 or config)")
    return model, cfg, manifest
