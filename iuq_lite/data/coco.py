"""COCO instance segmentation data: Dataset (pycocotools), joint augmentation, collate, layout check.

    ds = iuq.data.coco.CocoInstances("data/coco/val2017", "data/coco/annotations/instances_val2017.json")
    image, target = ds[0]      # [3,H,W] float in [0,1]; target dict, see CocoInstances
    images, targets = iuq.data.coco.collate([ds[0], ds[1]])   # [B,3,Hp,Wp], Hp/Wp multiples of 32

    python -m iuq_lite.data.coco check --root data/coco    # last stdout line: {"ok": ..., "problems": [...]}

Bad input fails with a message naming the file, image id or annotation id; degenerate annotations
(polygons with < 3 points, zero area, masks that decode empty) are skipped, counted in `.skipped` and
reported in ONE warning per dataset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..config import PRESETS, ModelConfig, from_preset
from . import shapes

# the format primitives stay reachable as data.coco.* too (notebook 06, data.samples)
from .format import encode_masks, index_coco, rle_json, split_paths  # noqa: F401

PAD_MULTIPLE = 32  # the backbone's largest stride: padded sizes divide by every feature stride
EAGER_MASK_CHECK_MAX = 100_000  # annotations; above it empty masks are found lazily (train2017: ~860k)
COCO_URLS = ("http://images.cocodataset.org/zips/train2017.zip",
             "http://images.cocodataset.org/zips/val2017.zip",
             "http://images.cocodataset.org/annotations/annotations_trainval2017.zip")
Target = dict[str, Any]


def _read_json(ann_file: str | os.PathLike) -> dict:
    """Load a COCO json and check its top-level structure; ValueError naming the file otherwise."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):  # bad file content, not a caller's type error: ValueError like the rest
        raise ValueError(f"{path}: not a COCO file (top level is {type(data).__name__}, not an object)")  # noqa: TRY004
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path}: not a COCO instances file: missing or non-list key(s) {missing}")
    return data


def _has(entry: Any, *keys: str) -> bool:
    return isinstance(entry, dict) and all(k in entry for k in keys)


def _scan(data: dict, path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Structural problems (fatal) and degenerate annotations {reason: [ann ids]} (skipped), cheaply."""
    skipped: dict[str, list[int]] = {"polygon_lt_3_points": [], "zero_area": [], "empty_mask": []}
    image_keys = ("id", "file_name", "height", "width")
    problems = [f"{path}: image entry {str(im)[:80]} lacks id/file_name/height/width"
                for im in data["images"] if not _has(im, *image_keys)]
    problems += [f"{path}: category entry {str(c)[:80]} lacks an id" for c in data["categories"] if not _has(c, "id")]
    imgs = {im["id"]: im for im in data["images"] if _has(im, *image_keys)}
    cat_ids = {c["id"] for c in data["categories"] if _has(c, "id")}
    for ann in data["annotations"]:
        if not _has(ann, "id", "image_id", "category_id", "segmentation") or ann["id"] is None:
            problems.append(f"{path}: annotation {str(ann)[:80]} lacks id/image_id/category_id/segmentation")
            continue
        aid = ann["id"]
        if ann["category_id"] not in cat_ids:
            problems.append(f"{path}: annotation id {aid} has category id {ann['category_id']}, "
                            f"which is not in 'categories'")
        if ann["image_id"] not in imgs:
            problems.append(f"{path}: annotation id {aid} refers to image id {ann['image_id']}, not in 'images'")
            continue
        im, segm = imgs[ann["image_id"]], ann["segmentation"]
        if isinstance(segm, list):
            if any(not isinstance(p, list) or len(p) % 2 for p in segm):
                problems.append(f"{path}: annotation id {aid}: polygon parts must be flat [x1,y1,x2,y2,...] lists")
            elif not any(len(p) >= 6 for p in segm):
                skipped["polygon_lt_3_points"].append(aid)
                continue
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if list(segm["size"]) != [im["height"], im["width"]]:
                problems.append(f"{path}: annotation id {aid}: RLE size {segm['size']} differs from image id "
                                f"{im['id']} size {[im['height'], im['width']]}")
        else:
            problems.append(f"{path}: annotation id {aid}: segmentation is neither polygons nor RLE")
        if ann.get("area", 1) == 0:
            skipped["zero_area"].append(aid)
    return problems, skipped


def _rle(ann: dict, h: int, w: int) -> dict:
    """One compressed RLE for polygons (parts with < 3 points dropped: pycocotools would read a 4-number
    part as a box), uncompressed RLE or compressed RLE."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects([p for p in segm if len(p) >= 6], h, w))
    return mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm


def _missing_text(missing: list[tuple[Any, str]], sep: str) -> str:
    """'path (image id i)' for the first five (image id, path) pairs, ' ...' when there are more."""
    return sep.join(f"{p} (image id {i})" for i, p in missing[:5]) + (" ..." if len(missing) > 5 else "")


# ------------------------------------------------------------------------------------------ images
def load_image(path: str | os.PathLike, image_id: Any = None) -> torch.Tensor:
    """Read any PIL-readable image as RGB float [3,H,W] in [0,1]. Grayscale is replicated, alpha dropped
    (not composited), palettes expanded, 16-bit scaled by 65535."""
    where = f"{path}" + (f" (image id {image_id})" if image_id is not None else "")
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {where} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I") or im.mode == "F":  # 16-bit PNGs open as I;16 or I; F taken as [0,1]
                arr = np.asarray(im, dtype=np.float32) / (1.0 if im.mode == "F" else 65535.0)
                arr = np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise OSError(f"cannot read image file {where}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------- dataset
class CocoInstances(torch.utils.data.Dataset):
    """COCO instance segmentation via pycocotools. Item: (image [3,H,W] float in [0,1], target) with

    target = {"image_id": int, "labels": [K] long (contiguous 0..num_classes-1, ordered by category id),
              "masks": [K,H,W] bool, "iscrowd": [K] bool, "groups": list of K lists of str}.

    Images without annotations give K = 0. `transforms(image, target) -> (image, target)` runs last.
    Attributes: coco, ids (sorted image ids), cat_ids, contiguous_to_cat_id, cat_id_to_contiguous,
    class_names, num_classes, skipped ({reason: [annotation ids]}).
    check_masks: decode every mask at construction to find empty ones (None: only when the file has at
    most EAGER_MASK_CHECK_MAX annotations); otherwise they are found, skipped and warned about on load.
    cache: keep each decoded item (before `transforms`) in memory after its first load, so later epochs skip
    the PNG and RLE decoding (the embedded shapes data: ~0.7 GB for 2,000 images; not for COCO)."""

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, *,
                 transforms: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
                 check_masks: bool | None = None, cache: bool = False) -> None:
        self.image_dir, self.ann_file, self.transforms = Path(image_dir), Path(ann_file), transforms
        self._cache: dict[int, tuple[torch.Tensor, Target]] | None = {} if cache else None
        data = _read_json(self.ann_file)
        problems, self.skipped = _scan(data, self.ann_file)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ValueError("; ".join(problems[:5]) + more)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image directory {self.image_dir} (for {self.ann_file}) does not exist")
        self.coco = index_coco(data)
        self.cat_ids = sorted(self.coco.cats)
        self.contiguous_to_cat_id = list(self.cat_ids)  # label i <-> category id, for results json
        self.cat_id_to_contiguous = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]
        self.num_classes, self.ids = len(self.cat_ids), sorted(self.coco.imgs)
        bad = {a for ids in self.skipped.values() for a in ids}
        if check_masks or (check_masks is None and len(self.coco.anns) <= EAGER_MASK_CHECK_MAX):
            for aid, ann in self.coco.anns.items():
                im = self.coco.imgs[ann["image_id"]]
                if aid not in bad and mask_utils.area(_rle(ann, im["height"], im["width"])) == 0:
                    self.skipped["empty_mask"].append(aid)
                    bad.add(aid)
        self._skip, self._warned_lazy = bad, False
        if bad:
            detail = ", ".join(f"{r}: {len(v)} (ids {v[:5]}{'...' if len(v) > 5 else ''})"
                               for r, v in self.skipped.items() if v)
            warnings.warn(f"{self.ann_file}: skipped {len(bad)} degenerate annotation(s): {detail}; "
                          "see .skipped", stacklevel=2)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def missing_files(self) -> list[tuple[int, str]]:
        """(image id, path) of every listed image that does not exist (cheap os.path.exists)."""
        return [(i, str(p)) for i in self.ids if not os.path.exists(p := self.image_path(i))]

    def check(self) -> None:
        """Raise FileNotFoundError naming the missing image files (paths and image ids), if any."""
        if missing := self.missing_files():
            raise FileNotFoundError(f"{len(missing)} image file(s) listed in {self.ann_file} are missing: "
                                    + _missing_text(missing, "; "))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if self._cache is None:
            image, target = self._load(index)
        elif (hit := self._cache.get(index)) is None:
            image, target = self._cache[index] = self._load(index)
        else:
            image, target = hit
        # the transforms and the callers build new tensors; the cached ones are never modified in place
        return self.transforms(image, target) if self.transforms is not None else (image, dict(target))

    def _load(self, index: int) -> tuple[torch.Tensor, Target]:
        image_id = self.ids[index]
        h, w = self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]
        image = load_image(self.image_path(image_id), image_id)
        if tuple(image.shape[-2:]) != (h, w):
            raise ValueError(f"image file {self.image_path(image_id)} (image id {image_id}) is "
                             f"{tuple(image.shape[-2:])} but {self.ann_file} says height={h}, width={w}")
        anns = [a for a in self.coco.imgToAnns[image_id] if a["id"] not in self._skip]
        masks = torch.zeros(0, h, w, dtype=torch.bool)
        if anns:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy=False DeprecationWarning, per call
                warnings.simplefilter("ignore", DeprecationWarning)
                dec = mask_utils.decode([_rle(a, h, w) for a in anns])  # [h,w,K] uint8
            masks = torch.from_numpy(np.ascontiguousarray(dec.transpose(2, 0, 1))).bool()
        keep = masks.flatten(1).any(1)                                   # [K]
        if not bool(keep.all()):  # only reachable without the eager mask check (large files)
            dropped = [a["id"] for a, k in zip(anns, keep.tolist()) if not k]
            self.skipped["empty_mask"].extend(dropped)
            self._skip.update(dropped)
            if not self._warned_lazy:
                self._warned_lazy = True
                warnings.warn(f"{self.ann_file}: annotation(s) {dropped} of image id {image_id} decode to empty "
                              "masks and are skipped (further ones are counted in .skipped without warning)")
            anns, masks = [a for a, k in zip(anns, keep.tolist()) if k], masks[keep]
        labels = [self.cat_id_to_contiguous[a["category_id"]] for a in anns]
        target = {"image_id": int(image_id), "labels": torch.tensor(labels, dtype=torch.long), "masks": masks,
                  "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
                  "groups": [list(a.get("groups", [])) for a in anns]}
        return image, target


# ------------------------------------------------------------------------------------ augmentation
class JointAugment:
    """Random horizontal flip, scale jitter and optional random crop, one draw for image and masks (torchvision
    v2 on tv_tensors; torch's global RNG, which DataLoader seeds per worker). With `crop_size`: large-scale
    jitter (fit the crop_size box times s ~ U(scale_range)), then a crop_size crop padded with 0 / False;
    without it, a resize by s. Instances whose masks become empty leave labels, masks, iscrowd and groups."""

    def __init__(self, scale_range: tuple[float, float] = (0.8, 1.25), crop_size: int | None = None) -> None:
        from torchvision.transforms import v2
        self.scale_range, self.crop_size = (float(scale_range[0]), float(scale_range[1])), crop_size
        self._flip = v2.RandomHorizontalFlip(0.5)
        self._crop = v2.RandomCrop(crop_size, pad_if_needed=True, fill=0) if crop_size else None

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        img, masks = self._flip(tv_tensors.Image(image), tv_tensors.Mask(target["masks"]))
        h, w = img.shape[-2:]
        s = float(torch.empty(()).uniform_(*self.scale_range))
        r = s * min(self.crop_size / h, self.crop_size / w) if self.crop_size else s  # LSJ fits the crop box
        size = [max(1, round(h * r)), max(1, round(w * r))]
        # Resized by hand rather than v2.ScaleJitter: that resizes masks with NEAREST, which is shifted by
        # up to a source pixel against the bilinear image; NEAREST_EXACT samples pixel centres like it.
        img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        masks = TF.resize(masks, size, interpolation=InterpolationMode.NEAREST_EXACT)
        if self._crop is not None:
            img, masks = self._crop(img, masks)
        masks = masks.as_subclass(torch.Tensor).bool()
        keep = masks.flatten(1).any(1)
        out = {**target, "masks": masks[keep], "labels": target["labels"][keep], "iscrowd": target["iscrowd"][keep],
               "groups": [g for g, k in zip(target["groups"], keep.tolist()) if k]}
        return img.as_subclass(torch.Tensor).clamp(0.0, 1.0), out   # not in place: may be the cached image


def build_augment(data_cfg: Any) -> JointAugment | None:
    """JointAugment(data_cfg.scale_range, data_cfg.crop_size), or None when data_cfg.augment is False."""
    return JointAugment(tuple(data_cfg.scale_range), data_cfg.crop_size) if data_cfg.augment else None


# ----------------------------------------------------------------------------------------- collate
def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Pad images (0) and masks (False) to the batch max size rounded UP to a multiple of 32. Returns images
    [B,3,Hp,Wp] and targets with masks [K,Hp,Wp], "size" = tensor([h, w]) (the valid, unpadded size) and
    their other keys (e.g. "orig_size")."""
    if not batch:
        raise ValueError("collate got an empty batch")
    hp, wp = (-(-max(img.shape[d] for img, _ in batch) // PAD_MULTIPLE) * PAD_MULTIPLE for d in (-2, -1))
    images, targets = [], []
    for img, tgt in batch:
        h, w = img.shape[-2:]
        images.append(F.pad(img, (0, wp - w, 0, hp - h)))
        targets.append({**tgt, "masks": F.pad(tgt["masks"], (0, wp - w, 0, hp - h)),  # bool pads with False
                        "size": torch.tensor([h, w])})
    return torch.stack(images), targets


# ------------------------------------------------------------------------------------- layout check
def coco_instructions(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> str:
    """How to download and lay out COCO 2017 under `root`."""
    tree = "\n".join([f"  {root}/", "    annotations/"] + [f"      instances_{s}2017.json" for s in splits]
                     + [f"    {s}2017/   (*.jpg)" for s in splits])
    return ("Download COCO 2017 (about 20 GB) and unpack it so that the tree is:\n" + tree + "\n"
            f"e.g.  mkdir -p {root} && cd {root} && "
            + " && ".join(f"wget {u} && unzip -q {u.rsplit('/', 1)[1]}" for u in COCO_URLS)
            + f"\nthen verify with: python -m iuq_lite.data.coco check --root {root}")


def require_coco(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Cheap start-up check of the layout (folders and annotation files present, folders non-empty);
    RuntimeError with download instructions otherwise. The full per-file check is `check_root`."""
    missing = []
    for img_dir, ann in (split_paths(root, s) for s in splits):
        if not img_dir.is_dir() or next(os.scandir(img_dir), None) is None:
            missing.append(f"{img_dir}/ (missing or empty)")
        if not ann.is_file():
            missing.append(str(ann))
    if missing:
        raise RuntimeError(f"COCO 2017 not found under {root}: missing {', '.join(missing)}.\n"
                           + coco_instructions(root, tuple(splits)))


def check_root(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Verify the COCO 2017 layout under `root`: annotation files parse, every listed image file exists,
    categories are known. Returns {"ok", "problems", "images", "annotations", "splits": {split: {...}}}."""
    out: dict[str, Any] = {"ok": True, "problems": [], "images": 0, "annotations": 0, "splits": {}}
    for split in splits:
        img_dir, ann = split_paths(root, split)
        info = out["splits"][split] = {"images": 0, "annotations": 0, "missing_files": 0, "unknown_categories": 0,
                                       "degenerate": 0}
        if not img_dir.is_dir():
            out["problems"].append(f"image folder {img_dir} does not exist")
        try:
            data = _read_json(ann)
        except (OSError, ValueError) as e:
            out["problems"].append(str(e))
            continue
        problems, skipped = _scan(data, ann)
        out["problems"] += problems[:20] + [f"{ann}: {len(problems) - 20} more problems"] * (len(problems) > 20)
        cats = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
        unknown = sum(isinstance(a, dict) and a.get("category_id") not in cats for a in data["annotations"])
        missing = [(im.get("id"), str(img_dir / im["file_name"])) for im in data["images"]
                   if _has(im, "file_name") and not os.path.exists(img_dir / im["file_name"])]
        if missing:
            out["problems"].append(f"{split}: {len(missing)} image file(s) missing: {_missing_text(missing, ', ')}")
        info.update(images=len(data["images"]), annotations=len(data["annotations"]), missing_files=len(missing),
                    unknown_categories=unknown, degenerate=sum(len(v) for v in skipped.values()))
        out["images"] += info["images"]
        out["annotations"] += info["annotations"]
        print(f"{split}: {info}", file=sys.stderr)
    out["ok"] = not out["problems"]
    return out


# ---------------------------------------------------------------------------------------- datasets
def dataset_files(data_cfg: Any) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """((train images, train ann), (val images, val ann)) of a DataConfig: the embedded shapes data when
    data_cfg.root is None (generated on demand; val_split="dev" gives the dev split for choosing schedules), else COCO 2017's train_split / val_split under data_cfg.root."""
    if data_cfg.root is not None:
        return split_paths(data_cfg.root, data_cfg.train_split), split_paths(data_cfg.root, data_cfg.val_split)
    paths = shapes.ensure_from_config(data_cfg)
    return tuple((Path(paths[f"{s}_images"]), Path(paths[f"{s}_ann"])) for s in ("train", data_cfg.val_split))


def build_datasets(data_cfg: Any) -> tuple[CocoInstances, CocoInstances]:
    """(train, val) CocoInstances of dataset_files(data_cfg) (COCO: after require_coco); train gets
    build_augment(data_cfg)."""
    if data_cfg.root is not None:
        require_coco(data_cfg.root, (data_cfg.train_split, data_cfg.val_split))
    train, val = dataset_files(data_cfg)
    # the embedded data is small by construction: hold the training items in memory (COCO streams from disk)
    return (CocoInstances(*train, transforms=build_augment(data_cfg), cache=data_cfg.root is None),
            CocoInstances(*val))


class ClassCountError(ValueError):
    """An explicit model.num_classes contradicts the dataset's categories (one-line message naming both)."""


def resolve_num_classes(cfg: Any, train_ds: CocoInstances, val_ds: CocoInstances | None = None, *,
                        explicit: bool = False) -> Any:
    """`cfg` with model.num_classes = the number of `categories` of a COCO-layout dataset (cfg.data.root set;
    the shapes data is generated for its preset and left alone). Different counts: one logged line, unless
    the count was set explicitly (`explicit`, or a value other than the preset's), which raises
    ClassCountError naming both numbers. Labels are contiguous (sorted category ids), so train and val must
    list the same category ids (ValueError otherwise)."""
    if cfg.data.root is None:
        return cfg
    if val_ds is not None and val_ds.cat_ids != train_ds.cat_ids:
        raise ValueError(f"{train_ds.ann_file} and {val_ds.ann_file} list different category ids "
                         f"({len(train_ds.cat_ids)} vs {len(val_ds.cat_ids)}): a label would mean two classes")
    n, m = train_ds.num_classes, cfg.model.num_classes
    if n == m:
        return cfg
    preset = from_preset(cfg.preset).model if cfg.preset in PRESETS else ModelConfig()
    explicit = explicit or m != preset.num_classes
    if explicit:
        raise ClassCountError(f"model.num_classes={m} was set explicitly, but {train_ds.ann_file} has {n} "
                              f"categories: drop the setting or set it to {n}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model.num_classes: {n} (the categories of {train_ds.ann_file}) instead of the preset's {m}",
              file=sys.stderr, flush=True)
    return replace(cfg, model=replace(cfg.model, num_classes=n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iuq_lite.data.coco", description=__doc__.splitlines()[0])
    chk = parser.add_subparsers(dest="cmd", required=True).add_parser(
        "check", help="verify a COCO 2017 layout; last stdout line is JSON")
    chk.add_argument("--root", required=True)
    chk.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    print(json.dumps(result := check_root(args.root, tuple(args.splits))))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
