"""Hungarian matcher: batched == per image, empty targets, permutation equivariance, optimality, and the pure
cost functions against their per-pair definitions."""
import itertools

import torch
import torch.nn.functional as F

from iuq_lite.losses import dice_loss
from iuq_lite.matcher import HungarianMatcher, batch_class_cost, batch_dice_cost, batch_sigmoid_ce_cost

Q, K = 5, 3


def _outputs(B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(B, Q, K + 1, generator=g),
            "pred_masks": 3 * torch.randn(B, Q, 8, 8, generator=g)}      # stride 4 of the 32-px targets


def _targets(counts: list[int], seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, K, (n,), generator=g), "masks": torch.rand(n, 32, 32, generator=g) > 0.5}
            for n in counts]


def _pairs(index: tuple[torch.Tensor, torch.Tensor]) -> set[tuple[int, int]]:
    return set(zip(index[0].tolist(), index[1].tolist()))


def test_batched_equals_per_image():
    matcher = HungarianMatcher(num_points=64)
    outputs, targets = _outputs(4), _targets([3, 0, 2, 1])
    batched = matcher(outputs, targets, generator=torch.Generator().manual_seed(5))
    # one generator consumed image by image reproduces the batch's points (one [P,2] block per image, in order)
    g = torch.Generator().manual_seed(5)
    for b in range(4):
        single = matcher({k: v[b:b + 1] for k, v in outputs.items()}, targets[b:b + 1], generator=g)[0]
        assert torch.equal(single[0], batched[b][0]) and torch.equal(single[1], batched[b][1])


def test_empty_targets_give_empty_indices():
    matcher = HungarianMatcher(num_points=16)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    for i, j in matcher(_outputs(2), empty * 2):
        assert i.shape == j.shape == (0,) and i.dtype == j.dtype == torch.int64


def test_permuting_targets_permutes_the_match():
    matcher = HungarianMatcher(num_points=64)
    outputs, (t,) = _outputs(1), _targets([3])
    perm = torch.tensor([2, 0, 1])
    permuted = {"labels": t["labels"][perm], "masks": t["masks"][perm]}
    base = matcher(outputs, [t], generator=torch.Generator().manual_seed(0))[0]
    other = matcher(outputs, [permuted], generator=torch.Generator().manual_seed(0))[0]
    assert _pairs(base) == {(i, int(perm[k])) for i, k in _pairs(other)}


def test_assignment_minimises_cost():
    matcher = HungarianMatcher(num_points=64)
    for seed, counts in enumerate([[1], [2], [3], [3]]):
        outputs, targets = _outputs(1, seed), _targets(counts, seed + 10)
        (i, j), = matcher(outputs, targets, generator=torch.Generator().manual_seed(seed))
        cost = matcher.cost_matrices(outputs, targets, generator=torch.Generator().manual_seed(seed))[0]
        T = counts[0]
        best = min(sum(cost[q, t] for t, q in enumerate(qs)) for qs in itertools.permutations(range(Q), T))
        assert len(i) == T and sorted(j.tolist()) == list(range(T))
        torch.testing.assert_close(cost[i, j].sum(), torch.as_tensor(best))


def test_matches_shifted_copies_across_resolutions():
    # predictions at stride 4 that reproduce the (input-resolution) targets in a shuffled order are found
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(3, 8, 8, generator=g) > 0.5                          # [T,8,8]
    masks = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)           # [T,32,32]
    order = torch.tensor([4, 1, 3])                                          # target t predicted by query order[t]
    pred = torch.full((1, Q, 8, 8), -8.0)
    pred[0, order] = torch.where(coarse, 8.0, -8.0)
    logits = torch.zeros(1, Q, K + 1)
    out = HungarianMatcher(cost_class=2, num_points=256)({"pred_logits": logits, "pred_masks": pred},
                                                         [{"labels": torch.tensor([0, 1, 2]), "masks": masks}])
    assert _pairs(out[0]) == {(4, 0), (1, 1), (3, 2)}


def test_cost_functions_match_pairwise_definitions():
    g = torch.Generator().manual_seed(0)
    pred, tgt = 2 * torch.randn(4, 50, generator=g), (torch.rand(3, 50, generator=g) > 0.5).float()
    ce, dice = batch_sigmoid_ce_cost(pred, tgt), batch_dice_cost(pred, tgt)
    for q in range(4):
        for t in range(3):
            torch.testing.assert_close(ce[q, t], F.binary_cross_entropy_with_logits(pred[q], tgt[t]))
            torch.testing.assert_close(dice[q, t], dice_loss(pred[q:q + 1], tgt[t:t + 1])[0])
    logits, labels = torch.randn(4, K + 1, generator=g), torch.tensor([2, 0, 2])
    torch.testing.assert_close(batch_class_cost(logits, labels), -logits.softmax(-1)[:, labels])
