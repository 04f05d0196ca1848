"""The COCO 2017 format on disk, shared by the data writers (shapes, samples) and the reader (coco).

    img_dir, ann = split_paths("data/coco", "val")     # ROOT/val2017, ROOT/annotations/instances_val2017.json
    rles = encode_masks(masks)                         # [K,H,W] bool -> K compressed RLEs
    json.dumps([rle_json(r) for r in rles])            # {"size": [h, w], "counts": str}
    coco = index_coco(ann)                             # pycocotools COCO, without its prints
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def index_coco(data: dict | str | os.PathLike) -> COCO:
    """A pycocotools COCO over a json dict or file, indexed without its progress prints on stdout."""
    coco = COCO()
    coco.dataset = data if isinstance(data, dict) else json.loads(Path(data).read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """Masks [K,H,W] (bool or {0,1}, tensor or array) -> K compressed RLEs (pycocotools, bytes counts)."""
    m = masks.detach().cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
    return mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8))) if len(m) else []


def rle_json(rle: dict) -> dict:
    """A compressed RLE as it is written to COCO json: {"size": [h, w], "counts": str}."""
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(ROOT/{split}2017, ROOT/annotations/instances_{split}2017.json)."""
    return Path(root) / f"{split}2017", Path(root) / "annotations" / f"instances_{split}2017.json"
