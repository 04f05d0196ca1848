"""iuq_lite: Learning Equivariant Segmentation with Instance-Unique Querying (Wang, Liang, Liu, NeurIPS 2022).

One import alias, every name's origin visible::

    import iuq_lite as iuq
    cfg = iuq.config.from_preset("tiny")
    result = iuq.train.train(cfg)

Layers, bottom to top. A module imports only modules named before it in this list (a package's name stands
for its __init__); tests/test_layers.py reads the list from here and fails on an import that points up, at
the top of a file or inside a function, and on any import cycle.

    primitives   config, utils, transforms, sampling
    data         data.format, data.shapes, data.coco, data.samples, data
    models       matcher, losses, model.adapter, model.backbone, model.mask2former, model.fcos,
                 model.condinst, model
    IUQ          iuq.inter, iuq.memory, iuq.equivariance, iuq.criterion, iuq
    engine       checkpoint, evaluate, train
    top floor    analysis, viz, figures, studies, experiments, demo, bench
"""
from importlib import import_module

__version__ = "0.1.0"
_SUBMODULES = ("config", "utils", "transforms", "sampling", "data", "matcher", "losses", "model", "iuq",
               "checkpoint", "evaluate", "train", "analysis", "viz", "figures", "studies", "experiments", "demo", "bench")


def __getattr__(name: str):
    # Lazy submodules: `iuq.train` works after `import iuq_lite as iuq` without importing torch eagerly.
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
