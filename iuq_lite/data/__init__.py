"""Datasets: the embedded procedural `shapes` data, the real `samples` photos and the COCO data path all go
through `coco`."""
from importlib import import_module


def __getattr__(name: str):
    # Lazy, so `iuq.data.shapes` works right after `import iuq_lite as iuq`.
    if name in ("shapes", "coco", "samples"):
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
