"""Instance-unique querying, the paper's contribution: the pixel memory, the two IUQ losses and a criterion
wrapping any base model (METHOD §2-§5).

    crit = iuq.iuq.IUQCriterion(base_criterion, cfg.iuq, seed=cfg.train.seed)
    losses = crit(model, images, targets, step=step)     # base terms + "loss_inter" + "loss_equi" (weighted)
    sum(losses.values()).backward(); opt.step()
    crit.after_step()                                    # enqueue this batch's instance pixels (METHOD §3)

    memory.py        PixelMemory (METHOD §3)
    inter.py         inter_mask_loss (§2, Eq. 5): API, naive reference, fused kernel, logits_fn autograd route
    equivariance.py  equivariance_loss (§4, Eq. 8) and TwoViews (both views in one DDP forward)
    criterion.py     IUQCriterion (§5: L = L_intra + w_inter L_inter + lambda L_equi)
The adapter protocol (how IUQ reads a model's outputs) lives with the models: model/adapter.py.
"""
from ..model.adapter import DotProductAdapter
from ..transforms import transform_targets, valid_region
from ..utils import step_seed
from .criterion import IUQCriterion
from .equivariance import TwoViews, equivariance_loss
from .inter import Segment, inter_mask_loss, inter_mask_loss_reference, set_compile
from .memory import PixelMemory

__all__ = ["DotProductAdapter", "IUQCriterion", "PixelMemory", "Segment", "TwoViews", "equivariance_loss",
           "inter_mask_loss", "inter_mask_loss_reference", "set_compile", "step_seed", "transform_targets",
           "valid_region"]
