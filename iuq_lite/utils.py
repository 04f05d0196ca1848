"""Small shared helpers: seeding, device choice, torch.distributed wrappers, atomic saves."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


# ------------------------------------------------------------------------------------ distributed
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main() -> bool:
    return rank() == 0


def init_distributed() -> torch.device | None:
    """Under torchrun (RANK set): init the process group (NCCL on GPU, gloo on CPU); returns this rank's GPU."""
    if "RANK" not in os.environ:
        return None
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.device(f"cuda:{local}") if torch.cuda.is_available() else None


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed)."""
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a [N_r, ...] tensor from every rank along dim 0 (ranks may hold different N_r).

    Detached: used for memory pixels and in-batch negatives, which never carry gradient (METHOD §2-§3).
    """
    if not is_dist():
        return x.detach()
    x = x.detach().contiguous()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


# ------------------------------------------------------------------------------------- RNG state
def step_seed(seed: int, step: int) -> int:
    """A generator seed from (train seed, step), equal on every DDP rank: splitmix64 of (seed << 32 | step) (no
    salted hash()); mixed because torch's CPU generator keeps only the low 32 bits of a seed."""
    z = ((int(seed) << 32) + int(step) + 0x9E3779B97F4A7C15) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) % (1 << 63)


def rng_state() -> dict:
    """Every RNG state as plain tensors / lists / numbers (loads with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(), "python": list(map(_plain, random.getstate())),
             "numpy": _plain(np_state)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(_tuple(x) for x in state["python"]))
    np_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):      # numpy MT19937 key: a list of ints survives weights_only loading
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return int(x) if isinstance(x, np.integer) else x


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


# --------------------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)          # mkstemp makes 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """True when the package's tracked files differ from the commit (results would not match the revision);
    None outside a checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                             cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the project checkout, or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
