"""iuq_lite: Learning Equivariant Segmentation with Instance-Unique Querying (Wang, Liang, Liu, NeurIPS 2022).

One import alias, every name's origin visible::

    import iuq_lite as iuq
    cfg = iuq.config.from_preset("tiny")
    result = iuq.train.train(cfg)
"""
from importlib import import_module

__version__ = "0.1.0"
_SUBMODULES = ("config", "data", "transforms", "model", "matcher", "losses", "iuq", "train", "evaluate",
               "experiments", "demo", "analysis", "viz", "figures", "bench", "utils")


def __getattr__(name: str):
    # Lazy submodules: `iuq.train` works after `import iuq_lite as iuq` without importing torch eagerly.
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
