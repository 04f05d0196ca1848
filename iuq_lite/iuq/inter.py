"""The inter-scene mask loss (METHOD §2, the paper's Eq. 5) as a chunked, fused focal loss.

    loss = iuq.iuq.inter_mask_loss(mask_embed, memory)      # [B,Q,C] x [M,C] -> scalar, grad reaches mask_embed

A query of image I must fire nowhere in other images: logits Z = einsum('bqc,mc->bqm', E, Mem) over memory
pixels of OTHER images, sigmoid focal loss against target 0 (1 for a stuff query at a pixel of its own stuff
class), mean over the kept (query, pixel) pairs. Z has B*Q*M elements (2*10^7 for Mask2Former on COCO), so
it is never materialised: the forward walks over tiles of M, computes the focal loss of the tile AND its
derivative dl/dZ in the same pass and accumulates dE += dZ @ Mem_tile into a [R,C] buffer; the backward only
scales that buffer by the upstream gradient (no recomputation, no third matmul). Cost: the two matmuls that
einsum's forward + backward need anyway, plus one elementwise pass per tile.

Focal loss with p = sigmoid(z), alpha = 0.25, gamma = 2 (Lin et al. 2017): l = alpha_t (1 - p_t)^gamma BCE.
Writing s = z for target t = 0 and s = -z for t = 1 (so BCE = softplus(s) and 1 - p_t = sigmoid(s)):

    l(s)     = a_t * sigmoid(s)^gamma * softplus(s)                 a_0 = 1 - alpha,  a_1 = alpha
    dl/ds    = a_t * sigmoid(s)^gamma * (gamma * sigmoid(-s) * softplus(s) + sigmoid(s))
    dl/dz    = +dl/ds for t = 0,   -dl/ds for t = 1

Excluded pairs get s = -inf, where l = 0 and dl/ds = 0 exactly (sigmoid(-inf) = softplus(-inf) = 0).
The elementwise part optionally runs under torch.compile (one fused loop instead of ~7 eager passes); set
IUQ_NO_COMPILE=1 (or `set_compile(False)`) to stay eager. Compilation is attempted only for large problems (>=
COMPILE_MIN_ELEMENTS logits) and falls back to eager, with a warning, if it fails.

Heads whose logits are not a dot product (CondInst's dynamic convolutions) pass a logits_fn and take the
chunked autograd route (`autograd_path`): per memory chunk (<= chunk pixels), logits_fn(E [B,Q,C], Mc [m,C],
Pc [m,2] or None) -> z [B,Q,m], the same focal loss with excluded pairs masked to -inf, summed; dLoss/dE is
taken right after and accumulated, so the backward only scales it. Large problems run the chunk under
torch.compile (the same switches).

Sections: tile math (the closed form), problem (the validated inputs), fused kernel, logits_fn route, public
API (`inter_mask_loss` and the naive oracle `inter_mask_loss_reference`).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torchvision.ops import sigmoid_focal_loss

# CPU tiles are sized in elements (R x m): small enough for the eager kernel's 4 buffers to stay cache-resident,
# large enough to keep the number of parallel regions (barriers) per call low, which matters when other
# processes share the cores (bench inter-loss: 2^20 / 2^21 were best or within noise of the best). On GPU the
# caller's chunk is used as is.
CPU_TILE_ELEMENTS = 1 << 20
COMPILED_TILE_ELEMENTS = 1 << 21
# Below this many logits compiling (seconds on CPU) cannot pay off within a run's first steps.
COMPILE_MIN_ELEMENTS = 1 << 23
# A logits_fn route's pair costs ~this many dot-product pairs (CondInst: 3 layers of 8 channels), so it is
# compiled from COMPILE_MIN_ELEMENTS / 8 pairs on.
AUTOGRAD_COMPILE_GAIN = 8
_COMPILE = {"enabled": os.environ.get("IUQ_NO_COMPILE", "0").lower() in ("0", "", "false", "no"),
            "fn": None, "chunk": None, "failed": False}


def set_compile(enabled: bool) -> None:
    """Allow (True) or forbid (False) torch.compile of the per-tile focal math (default: env IUQ_NO_COMPILE)."""
    _COMPILE["enabled"] = bool(enabled)


def compile_active() -> bool:
    """Whether large problems currently use the compiled tile math."""
    return _COMPILE["enabled"] and not _COMPILE["failed"]


# ------------------------------------------------------------------------------------------ tile math
def _terms(s: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-0 focal terms without the (1-alpha) factor, elementwise: s [R,m] -> (l0, dl0/ds), both [R,m].

    One exp, one log1p, one division per element: e = exp(-|s|) gives sigmoid(s), sigmoid(-s) and
    softplus(s) = max(s, 0) + log1p(e) stably (no overflow, no 1 - sigmoid cancellation).
    """
    e = torch.exp(-s.abs())
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = s >= 0
    sig = torch.where(pos, r, er)                      # sigmoid(s)
    om = torch.where(pos, er, r)                       # sigmoid(-s)
    sp = torch.clamp_min(s, 0.0) + torch.log1p(e)      # softplus(s)
    pw = sig * sig if gamma == 2.0 else sig.pow(gamma)
    return pw * sp, pw * (gamma * om * sp + sig)


def _neg_math(s: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of l0, dl0/ds [R,m]): the per-tile work, written for torch.compile (one fused loop)."""
    l0, g0 = _terms(s, gamma)
    return l0.sum(), g0


def _neg_eager(z: torch.Tensor, gamma: float, sig: torch.Tensor, sp: torch.Tensor, pw: torch.Tensor,
               need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as _neg_math with out= buffers [R,m] (no allocation per tile); OVERWRITES z. Returns the gradient in
    `sig`."""
    torch.sigmoid(z, out=sig)
    torch.ops.aten.softplus.out(z, 1, 20, out=sp)
    if gamma == 2.0:
        torch.mul(sig, sig, out=pw)
    else:
        pw.copy_(torch.exp(gamma * F.logsigmoid(z)))
    loss = torch.dot(pw.view(-1), sp.view(-1))
    if not need_grad:
        return loss, None
    torch.addcmul(sp, sp, sig, value=-1.0, out=z)      # z <- softplus * (1 - sigmoid)
    sig.add_(z, alpha=gamma).mul_(pw)                  # sig <- pw * (gamma * sp * (1 - sig) + sig)
    return loss, sig


def compiled_call(key: str, fn, *args, what: str):
    """_COMPILE[key] = torch.compile(fn, dynamic=True) (built once) applied to args, or None, with a warning and
    compilation disabled from then on, if compiling fails. dynamic=True: the last tile or chunk of every segment
    has another width; one graph serves all. Used by the fused tile math and the logits_fn route's chunks."""
    try:
        if _COMPILE[key] is None:
            _COMPILE[key] = torch.compile(fn, dynamic=True)
        return _COMPILE[key](*args)
    except Exception as exc:  # noqa: BLE001 - any backend failure (no compiler, no triton) means: stay eager
        _COMPILE["failed"] = True
        warnings.warn(f"torch.compile of the inter-loss {what} failed ({type(exc).__name__}: {exc}); "
                      "using eager code", RuntimeWarning, stacklevel=3)
        return None


# ------------------------------------------------------------------------------------------ problem
@dataclass
class Segment:
    """A block of negatives: features [m,C] (detached), labels [m] long or None, image_ids [m] long or None,
    positions [m,2] normalised (y, x) in the source image or None (for position-dependent heads' logits_fn)."""
    features: torch.Tensor
    labels: torch.Tensor | None = None
    image_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None


@dataclass
class _Problem:
    segments: list[Segment]
    rows: torch.Tensor | None        # kept flat query indices into B*Q (None = all kept)
    offsets: list[int]               # image b owns kept rows offsets[b]:offsets[b+1]
    image_ids: torch.Tensor | None   # [B]
    row_labels: torch.Tensor | None  # [R] stuff class of each kept row, -1 otherwise; None = no stuff rows
    count: int                       # kept pairs
    norm: float                      # the summed loss is divided by this (default: count)
    need_grad: bool
    alpha: float
    gamma: float
    chunk: int
    compile_ok: bool


def _own(seg: Segment, image_ids: torch.Tensor | None, lo: int = 0, hi: int | None = None) -> torch.Tensor | None:
    """[B,m] bool: memory pixel j comes from batch image b (an excluded pair), or None when ids are unknown."""
    if seg.image_ids is None or image_ids is None:
        return None
    return seg.image_ids[lo:hi].to(image_ids.device)[None, :] == image_ids[:, None]


def _exclude_(x: torch.Tensor, own: torch.Tensor, offsets: list[int]) -> None:
    """Set x[rows of image b, j] = -inf where own[b, j] (l = dl/ds = 0 there). In place; x [R,m]."""
    for b in range(own.shape[0]):
        if offsets[b + 1] > offsets[b]:
            x[offsets[b]:offsets[b + 1]].masked_fill_(own[b][None, :], float("-inf"))


def _fused_forward(E: torch.Tensor, p: _Problem, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E [R,C] (kept rows, compute dtype) -> (mean loss, dLoss/dE [R,C] or None). One pass over the memory."""
    R, C = E.shape
    dtype, dev = E.dtype, E.device
    acc = torch.float64
    total_neg = torch.zeros((), dtype=acc, device=dev)     # sum of target-0 terms, without (1 - alpha)
    total_gen = torch.zeros((), dtype=acc, device=dev)     # tiles with stuff positives, alpha_t included
    dE = torch.zeros(R, C, dtype=dtype, device=dev) if need_grad else None
    dE_gen = torch.zeros_like(dE) if need_grad and p.row_labels is not None else None
    m_max = max(s.features.shape[0] for s in p.segments)
    compiled = p.compile_ok and compile_active() and need_grad
    tile = p.chunk                     # the caller's bound on pixels per tile (peak memory)
    if dev.type != "cuda":
        elements = COMPILED_TILE_ELEMENTS if compiled else CPU_TILE_ELEMENTS
        tile = min(tile, max(64, elements // max(R, 1)))
    tile = max(1, min(tile, m_max))
    # z (logits, then scratch) + the eager kernel's sigmoid / softplus / sigmoid^gamma buffers
    work = torch.empty(1 if compiled else 4, R * tile, dtype=dtype, device=dev)
    for seg in p.segments:
        mem = seg.features
        own_seg = _own(seg, p.image_ids)
        seg_has_own = own_seg is not None and bool(own_seg.any())
        for lo in range(0, mem.shape[0], tile):
            Mc = mem[lo:lo + tile].to(dtype)                                     # [m,C]
            m = Mc.shape[0]
            z = work[0][:R * m].view(R, m)
            torch.mm(E, Mc.t(), out=z)                                         # logits [R,m]
            own = own_seg[:, lo:lo + m] if seg_has_own else None
            if own is not None and dev.type != "cuda" and not bool(own.any()):
                own = None                                                     # CPU: skip the fill cheaply
            t = None
            if p.row_labels is not None and seg.labels is not None:
                lab = seg.labels[lo:lo + m].to(dev)
                t = (p.row_labels[:, None] >= 0) & (p.row_labels[:, None] == lab[None, :])   # [R,m]
                t = t if bool(t.any()) else None
            if t is not None:
                # Stuff positives in this tile (rare, panoptic only): plain eager autograd-free formulas.
                sign = 1.0 - 2.0 * t.to(dtype)
                s = z * sign
                if own is not None:
                    _exclude_(s, own, p.offsets)
                a = torch.where(t, p.alpha, 1.0 - p.alpha).to(dtype)
                l0, g0 = _terms(s, p.gamma)
                total_gen += (a * l0).sum().to(acc)
                if need_grad:
                    dE_gen.addmm_(a * g0 * sign, Mc)
                continue
            if own is not None:
                _exclude_(z, own, p.offsets)
            out = compiled_call("fn", _neg_math, z, p.gamma, what="tile math") if compiled else None
            if out is None:
                if len(work) == 1:         # compilation failed just now: add the eager buffers (keeps z)
                    work = torch.cat([work, work.new_empty(3, work.shape[1])])
                    z = work[0][:R * m].view(R, m)
                sig, sp, pw = (w[:R * m].view(R, m) for w in work[1:])
                loss, g = _neg_eager(z, p.gamma, sig, sp, pw, need_grad)
            else:
                loss, g = out
            total_neg += loss.to(acc)
            if need_grad:
                dE.addmm_(g, Mc)                                               # dE += dl/dz @ Mem_tile
    scale = 1.0 / p.norm
    loss = ((1.0 - p.alpha) * total_neg + total_gen) * scale
    if need_grad:
        dE.mul_((1.0 - p.alpha) * scale)
        if dE_gen is not None:
            dE.add_(dE_gen, alpha=scale)
    return loss.to(dtype), dE


class _FusedInterFocal(torch.autograd.Function):
    """loss = mean focal over kept pairs; forward accumulates dLoss/dE, backward = grad_output * dE."""

    @staticmethod
    def forward(ctx, mask_embed: torch.Tensor, p: _Problem) -> torch.Tensor:  # type: ignore[override]
        B, Q, C = mask_embed.shape
        need_grad = p.need_grad
        if p.count == 0:
            ctx.save_for_backward(torch.zeros_like(mask_embed))
            return mask_embed.new_zeros((), dtype=torch.promote_types(mask_embed.dtype, torch.float32))
        # fp32 at least (autocast off): the sums over 10^7 pairs must not run in bf16.
        dtype = torch.promote_types(mask_embed.dtype, torch.float32)
        with torch.autocast(mask_embed.device.type, enabled=False):
            E = mask_embed.detach().reshape(B * Q, C).to(dtype)
            if p.rows is not None:
                E = E[p.rows]
            loss, dE = _fused_forward(E.contiguous(), p, need_grad)
        if need_grad:
            full = dE
            if p.rows is not None:
                full = dE.new_zeros(B * Q, C).index_copy_(0, p.rows, dE)
            ctx.save_for_backward(full.view(B, Q, C).to(mask_embed.dtype))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (dE,) = ctx.saved_tensors
        return dE * grad.to(dE.dtype), None


# ------------------------------------------------------------------------------------- logits_fn route
def _focal_generic(s: torch.Tensor, a: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """Elementwise a * sigmoid(s)^gamma * softplus(s) with autograd (stable: exp(gamma * logsigmoid))."""
    return a * torch.exp(gamma * F.logsigmoid(s)) * F.softplus(s)


class _Precomputed(torch.autograd.Function):
    """A loss whose dLoss/dE was accumulated in the forward pass: backward = grad_output * dE."""
    @staticmethod
    def forward(ctx, E: torch.Tensor, loss: torch.Tensor, dE: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(dE)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.saved_tensors[0] * grad.to(ctx.saved_tensors[0].dtype), None, None


def _chunk_loss(logits_fn: Callable, E: torch.Tensor, Mc: torch.Tensor, pos: torch.Tensor | None,
                drop: torch.Tensor | None, t: torch.Tensor | None, alpha: float, gamma: float) -> torch.Tensor:
    """Summed focal loss of one memory chunk through logits_fn; drop (broadcast to [B,Q,m]) / t [B,Q,m] bool
    or None."""
    z = logits_fn(E, Mc, pos)                                                  # [B,Q,m]
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    s = z if t is None else torch.where(t, -z, z)
    a = 1.0 - alpha if t is None else torch.where(t, alpha, 1.0 - alpha)
    return _focal_generic(s if drop is None else s.masked_fill(drop, float("-inf")), a, gamma).sum()


def autograd_path(E: torch.Tensor, p: _Problem, logits_fn: Callable, qmask: torch.Tensor | None,
                   query_labels: torch.Tensor | None) -> torch.Tensor:
    """Chunked autograd for non-dot-product heads: logits_fn(E [B,Q,C], Mc [m,C], Pc [m,2] or None) -> [B,Q,m]
    (Pc: the chunk's Segment.positions). Each chunk's dLoss/dE is taken right after its forward and summed:
    peak memory bounded by one chunk without checkpointing's second forward (1.45x faster for CondInst, CPU)."""
    need = torch.is_grad_enabled() and E.requires_grad
    leaf = E.detach().requires_grad_(need)
    total = E.new_zeros((), dtype=torch.promote_types(E.dtype, torch.float32))
    dE = torch.zeros_like(leaf) if need else None
    for seg in p.segments:
        n = seg.features.shape[0]
        ends = list(range(p.chunk, n, p.chunk)) + [n] if n else []
        if len(ends) > 1 and n - ends[-2] == 1:  # no 1-pixel chunk: a compiled graph would specialise on it
            del ends[-2]
        for lo, hi in zip([0] + ends[:-1], ends):
            Mc = seg.features[lo:hi]
            lab = None if seg.labels is None else seg.labels[lo:hi].to(E.device)
            own = _own(seg, p.image_ids, lo, hi)                               # [B,m] or None
            drop = None if own is None else own[:, None, :]                    # [B,1,m], [B,Q,1], [B,Q,m]
            if qmask is not None:
                drop = ~qmask[:, :, None] if drop is None else drop | ~qmask[:, :, None]
            t = None
            if query_labels is not None and lab is not None:
                ql = query_labels[:, :, None]
                t = (ql >= 0) & (ql == lab[None, None, :])                     # [B,Q,m] stuff targets
            args = (logits_fn, leaf, Mc, None if seg.positions is None else seg.positions[lo:hi],
                    drop, t, p.alpha, p.gamma)
            with torch.set_grad_enabled(need):
                # compiling fuses the dynamic heads' ReLUs, biases and focal terms: 1.8x faster, CondInst, CPU
                loss = (compiled_call("chunk", _chunk_loss, *args, what="chunk") if p.compile_ok and compile_active()
                        else None)
                loss = _chunk_loss(*args) if loss is None else loss
            if need:
                dE += torch.autograd.grad(loss, leaf)[0]
            total = total + loss.detach()
    return _Precomputed.apply(E, total / p.norm, dE / p.norm) if need else total / p.norm


# ------------------------------------------------------------------------------------------ public
def inter_mask_loss(mask_embed: torch.Tensor, memory: torch.Tensor | list[Segment], *,
                    memory_labels: torch.Tensor | None = None, memory_image_ids: torch.Tensor | None = None,
                    query_labels: torch.Tensor | None = None, image_ids: torch.Tensor | None = None,
                    query_mask: torch.Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0,
                    chunk: int = 16384, logits_fn: Callable | None = None,
                    normalizer: Callable[[int], float] | None = None) -> torch.Tensor:
    """Inter-scene mask loss (METHOD §2, Eq. 5): mean sigmoid focal loss of query x memory-pixel logits.

    mask_embed [B,Q,C] (gradient flows here only); memory [M,C] (detached inside) or a list of `Segment`s
    (several blocks of negatives, e.g. the bank and the in-batch pixels, without concatenating them);
    memory_labels [M] long and memory_image_ids [M] long (per pixel); query_labels [B,Q] long: a stuff query's
    class, -1 for every other query; image_ids [B] long; query_mask [B,Q] bool (False = query left out).
    logits[b,q,j] = E[b,q] . memory[j]  (or logits_fn(mask_embed, memory_chunk, Segment.positions chunk or
    None) -> [B,Q,m] for non-dot-product heads, e.g. CondInst's dynamic convolutions; chunked autograd).
    target[b,q,j] = 1 iff query_labels[b,q] >= 0 and == memory_labels[j], else 0. Pairs with
    memory_image_ids[j] == image_ids[b] and queries with query_mask False are excluded. Returns the MEAN focal
    loss (alpha, gamma) over the kept pairs; 0.0, still in the graph, when none are kept. Work is tiled over
    M (at most `chunk` pixels per tile), so peak memory is bounded by the chunk, not by M.
    normalizer(kept pairs) -> divisor of the summed loss instead of the count, called on every call (a DDP
    caller all-reduces the count there: sum / (global count / world) makes DDP's gradient mean exact).
    """
    if mask_embed.dim() != 3:
        raise ValueError(f"mask_embed must be [B,Q,C], got {tuple(mask_embed.shape)}")
    B, Q, C = mask_embed.shape
    dev = mask_embed.device
    if isinstance(memory, torch.Tensor):
        memory = [Segment(memory, memory_labels, memory_image_ids)]
    segments = [Segment(*(None if x is None else x.detach().to(dev)                  # every field on E's device
                          for x in (s.features, s.labels, s.image_ids, s.positions))) for s in memory]
    segments = [s for s in segments if s.features.shape[0] > 0] or [Segment(mask_embed.new_zeros(0, C))]
    if logits_fn is None and any(s.features.shape[-1] != C for s in segments):   # logits_fn: any width
        raise ValueError(f"memory width {segments[0].features.shape[-1]} != mask_embed width {C}")
    if image_ids is not None:
        image_ids = torch.as_tensor(image_ids, device=dev).long().view(B)
    qmask = None if query_mask is None else query_mask.to(dev).bool().view(B, Q)
    nq = qmask.sum(1) if qmask is not None else torch.full((B,), Q, device=dev)           # [B]
    nj = torch.zeros(B, dtype=torch.long, device=dev)
    for s in segments:
        own = _own(s, image_ids)
        nj += s.features.shape[0] - (own.sum(1) if own is not None else 0)
    count = int((nq.long() * nj).sum())
    if query_labels is not None:
        query_labels = query_labels.to(dev).long().view(B, Q)
        if not bool((query_labels >= 0).any()) or all(s.labels is None for s in segments):
            query_labels = None
    rows = None if qmask is None or bool(qmask.all()) else qmask.flatten().nonzero().squeeze(1)
    offsets = [0] + torch.cumsum(nq, 0).tolist()
    row_labels = None
    if query_labels is not None:
        row_labels = query_labels.flatten() if rows is None else query_labels.flatten()[rows]
    need_grad = torch.is_grad_enabled() and mask_embed.requires_grad
    norm = float(count if normalizer is None else normalizer(count))
    work = B * Q * sum(s.features.shape[0] for s in segments) * (1 if logits_fn is None else AUTOGRAD_COMPILE_GAIN)
    p = _Problem(segments, rows, [int(o) for o in offsets], image_ids, row_labels, count, norm or 1.0,
                 need_grad, float(alpha), float(gamma), max(1, int(chunk)), compile_ok=work >= COMPILE_MIN_ELEMENTS)
    if logits_fn is None or count == 0:
        return _FusedInterFocal.apply(mask_embed, p)
    return autograd_path(mask_embed, p, logits_fn, qmask, query_labels)


def inter_mask_loss_reference(mask_embed: torch.Tensor, memory: torch.Tensor, *,
                              memory_labels: torch.Tensor | None = None,
                              memory_image_ids: torch.Tensor | None = None,
                              query_labels: torch.Tensor | None = None, image_ids: torch.Tensor | None = None,
                              query_mask: torch.Tensor | None = None, alpha: float = 0.25,
                              gamma: float = 2.0) -> torch.Tensor:
    """The naive O(B*Q*M)-memory version (einsum + torchvision.ops.sigmoid_focal_loss, masked mean): the
    oracle of the tests and the 'naive' row of `python -m iuq_lite.bench inter-loss`."""
    B, Q, _ = mask_embed.shape
    memory = memory.detach()
    M = memory.shape[0]
    z = torch.einsum("bqc,mc->bqm", mask_embed, memory)
    target = torch.zeros_like(z)
    if query_labels is not None and memory_labels is not None:
        ql = query_labels[:, :, None]
        target = ((ql >= 0) & (ql == memory_labels[None, None, :])).to(z.dtype)
    keep = torch.ones(B, Q, M, dtype=torch.bool, device=z.device)
    if memory_image_ids is not None and image_ids is not None:
        keep &= (memory_image_ids[None, :] != torch.as_tensor(image_ids, device=z.device)[:, None])[:, None, :]
    if query_mask is not None:
        keep &= query_mask.bool()[:, :, None]
    loss = sigmoid_focal_loss(z, target, alpha=alpha, gamma=gamma, reduction="none")
    return (loss * keep).sum() / keep.sum().clamp(min=1)
