"""Does a model's mask-feature flip error say anything about its masks? A check of the converged study's runs.

    PYTHONPATH=<study worktree> python scripts/flip_check.py [--runs runs/study/long]
        [--out results/long_flip_check.json]

Runs already in --out whose folders are not under --runs keep their entry; each entry records its revision.

`diagnose` reports the feature equivariance error ||f(g(I)) - g(f(I))|| / ||g(f(I))||
(analysis.equivariance_errors); for g = hflip, full IUQ seed 2 measured 0.92 where seeds 0-1 measured
0.29-0.30 and the baselines 0.53-0.54.
Figures per finished run (runs/<row>_s<seed>/model.pt) answer where that comes from and whether it matters:

- the feature template, on the 64-image pool `diagnose` uses (seed 0): write f(I) [C,h,w] = M + R(I), M the
  mean over the pool, an image-independent spatial pattern (a CNN learns absolute position from zero padding).
  "template_share" = sum over images ||M||^2 / sum ||f(I)||^2; "template_asym" = ||M - flip M|| / ||M||;
  "residual_hflip" = ||(f(flip I) - M) - flip(f(I) - M)|| / ||f(I) - M||, the flip error of the image part;
- "AP_hflip_input": val mask AP with every image flipped left-right and the mask logits [B,Q,h,w] flipped back
  (Mask2Former-style models), beside the recorded "segm/AP": do the masks depend on the pattern's odd part?
- "mask_hflip": what Eq. 8 asks at test time, ||m - m_g|| / ||m||, m = sigmoid(E^g f(flip I)), m_g =
  sigmoid(E^g flip(f(I))),
  over the queries of flip(I) with a class probability > 0.5 (E^g [B,Q,C] their mask embeddings): do the masks
  survive swapping the features for the flipped ones, whatever the feature error? And per query (masks > 0.5):
  "query_self_iou", the IoU of a kept query's mask on f(flip I) with ITS OWN mask on flip(f(I));
  "query_best_iou", with the best-matching query's; "query_best_is_self", how often that query is itself.
  Eq. 8 re-runs the Hungarian matcher on its branch (METHOD §4, our choice), so it is met as well when flip
  maps the masks onto a PERMUTATION of the queries: self IoU low, best IoU high. "eq8_hflip": Eq. 8's own loss
  (before lambda) for g = hflip on the same pool and forwards: is Eq. 8, as trained, met?

Not part of the library (its size budget): a one-off analysis that reads the library's own evaluation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from iuq_lite import transforms, utils
from iuq_lite.checkpoint import load_model
from iuq_lite.data.coco import build_datasets, collate
from iuq_lite.evaluate import evaluate
from iuq_lite.iuq import equivariance_loss
from iuq_lite.model import build_criterion, iuq_adapter


class FlippedInput(torch.nn.Module):
    """model(flip(images)) with "pred_masks" [B,Q,h,w] flipped back: test-time hflip, Mask2Former-style."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.test_topk = model, getattr(model, "test_topk", None)

    def forward(self, images: torch.Tensor) -> dict:
        out = self.model(images.flip(-1))
        return {**out, "pred_masks": out["pred_masks"].flip(-1)}


@torch.no_grad()
def flip_stats(model: torch.nn.Module, dataset, *, criterion: torch.nn.Module | None = None,
               num_images: int = 64, seed: int = 0, batch_size: int = 8,
               threshold: float = 0.5) -> dict[str, float]:
    """The whole "hflip" error of mask features [N,C,h,w], template_share, template_asym, residual_hflip,
    mask_hflip and the query_* figures (queries of flip(I) with a class probability > threshold) over the
    seeded pool of analysis.equivariance_errors (same images, full-image flip); with `criterion` (the model's
    base criterion, model.build_criterion) also "eq8_hflip", Eq. 8's loss (METHOD §4, before lambda, matcher
    re-run) for g = hflip, the mean over the pool's batches, from the same two forwards."""
    model.eval()
    torch.manual_seed(seed)                                     # the mask loss samples points
    adapter = iuq_adapter(model)
    idx = sorted(np.random.default_rng(seed).permutation(len(dataset))[:num_images].tolist())
    f, f_g, sq, self_iou, best_iou, best_is_self, eq8 = [], [], np.zeros(2), [], [], [], []
    for s in range(0, len(idx), batch_size):
        images, targets = collate([dataset[i] for i in idx[s:s + batch_size]])
        g = transforms.sample("hflip", image_size=tuple(images.shape[-2:]), stride=adapter.stride,
                              generator=torch.Generator())                       # hflip draws nothing
        out, out_g = model(images), model(g.image(images))
        f.append(adapter.features(out))
        f_g.append(adapter.features(out_g))
        if criterion is not None:
            eq8.append(float(equivariance_loss(out_g, f[-1], targets, g, adapter=adapter,
                                               mask_criterion=criterion.mask_loss)))
        # Eq. 8 at test time: the flipped image's confident queries on f(flip I) and on flip(f(I))
        keep = out_g["pred_logits"].softmax(-1)[..., :-1].amax(-1) > threshold          # [B,Q]
        E_g = adapter.embed(out_g)                                                       # [B,Q,C]
        m_g, m_gf = (torch.einsum("bqc,bchw->bqhw", E_g, x).sigmoid() for x in (f_g[-1], g.features(f[-1])))
        k = keep[..., None, None].float()
        sq += [float((((m_g - m_gf) * k) ** 2).sum()), float(((m_g * k) ** 2).sum())]
        for b in range(len(images)):                       # mask IoU of each kept query with every query
            qs = keep[b].nonzero().flatten()
            A, B = (m_g[b, qs] > 0.5).flatten(1).float(), (m_gf[b] > 0.5).flatten(1).float()   # [k,P], [Q,P]
            inter = A @ B.T
            iou = inter / (A.sum(1, keepdim=True) + B.sum(1) - inter).clamp(min=1)               # [k,Q]
            self_iou += iou[torch.arange(len(qs)), qs].tolist()
            best_iou += iou.max(1).values.tolist()
            best_is_self += (iou.argmax(1) == qs).tolist()
    f, f_g = torch.cat(f), torch.cat(f_g)                                         # [N,C,h,w]
    M = f.mean(0, keepdim=True)                                                   # [1,C,h,w]
    R, R_g = f - M, f_g - M

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a ** 2).sum() / (b ** 2).sum()) ** 0.5

    return {"hflip": ratio(f_g - g.features(f), f), "template_share": ratio(M, f) ** 2 * len(f),
            "template_asym": ratio(M - g.features(M), M), "residual_hflip": ratio(R_g - g.features(R), R),
            "mask_hflip": float(np.sqrt(sq[0] / sq[1])), "queries_kept": len(self_iou),
            "query_self_iou": float(np.mean(self_iou)), "query_best_iou": float(np.mean(best_iou)),
            "query_best_is_self": float(np.mean(best_is_self)),
            **({"eq8_hflip": float(np.mean(eq8))} if eq8 else {})}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/study/long"))
    p.add_argument("--out", type=Path, default=Path("results/long_flip_check.json"))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    commit = utils.git_commit(Path(sys.modules["iuq_lite"].__file__).parent)     # the library measured with
    # runs measured before whose folders are gone (a machine replaced between sessions) keep their entry
    old = json.loads(a.out.read_text()) if a.out.exists() else {"runs": []}
    rows = {r["run"]: {"commit": old.get("commit"), **r} for r in old["runs"]}
    for path in sorted(a.runs.glob("*/model.pt")):
        man = json.loads((path.parent / "manifest.json").read_text())
        model, cfg = load_model(path)
        val = build_datasets(cfg.data)[1]
        ap = evaluate(FlippedInput(model), val, topk=cfg.model.test_topk)["segm/AP"]
        r = rows[path.parent.name] = {"run": path.parent.name, "seed": man["seed"], "commit": commit,
                                      "segm/AP": man["metrics"]["segm/AP"], "AP_hflip_input": ap,
                                      **flip_stats(model, val, criterion=build_criterion(cfg))}
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    res = {"command": "python scripts/flip_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "runs": list(rows.values())}
    utils.write_json(res, a.out)
    return res


if __name__ == "__main__":
    main()
