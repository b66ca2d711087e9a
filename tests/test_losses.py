"""Each inversion loss against hand-computed values."""

import math

import pytest
import torch

from dfgen import losses as L
from dfgen.config import LossWeights
from dfgen.inversion import lr_at, objective


def test_channel_stats_biased_variance_over_nhw():
    x = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # (N=2, C=1, H=1, W=2)
    mean, var = L.channel_stats(x)
    assert mean.tolist() == [4.0]
    assert var.tolist() == [5.0]  # (9 + 1 + 1 + 9) / 4, biased


def test_channel_stats_gradient_matches_autograd_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    weights_mean, weights_var = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)

    def reference(x):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        return mean, var

    for fn in (L.channel_stats, reference):
        x.grad = None
        mean, var = fn(x)
        ((mean * weights_mean).sum() + (var * weights_var).sum()).backward()
        if fn is L.channel_stats:
            fast = x.grad.clone()
    torch.testing.assert_close(fast, x.grad)
    assert torch.autograd.gradcheck(lambda t: L.channel_stats(t), (x.detach().requires_grad_(True),))


def test_bn_layer_loss_is_sum_of_plain_norms():
    loss = L.bn_layer_loss(torch.tensor([3.0, 4.0]), torch.tensor([2.0, 2.0]), torch.zeros(2), torch.tensor([2.0, 1.0]))
    assert loss.item() == pytest.approx(5.0 + 1.0)  # ||(3,4)|| + ||(0,1)||, not squared


def test_bn_loss_first_layer_multiplier():
    layers = [torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0)]
    assert L.bn_loss(layers, first_bn_multiplier=10).item() == pytest.approx(27.0)
    assert L.bn_loss(layers, first_bn_multiplier=1).item() == pytest.approx(9.0)
    with pytest.raises(ValueError):
        L.bn_loss([])


IMAGE = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])


def test_tv_l2_four_directions():
    # right: (-1, -2); down: (-2, -3); anti-diagonal: 2 - 1; diagonal: 0 - 4
    expected = math.sqrt(5) + math.sqrt(13) + 1 + 4
    assert L.tv_l2(IMAGE).item() == pytest.approx(expected)


def test_tv_l1_four_directions():
    assert L.tv_l1(IMAGE).item() == pytest.approx(1.5 + 2.5 + 1 + 4)


def test_tv_of_constant_image_is_zero():
    assert L.tv_l2(torch.ones(2, 3, 5, 5)).item() == 0
    assert L.tv_l1(torch.ones(2, 3, 5, 5)).item() == 0


def test_l2_prior_mean_of_per_image_norms():
    x = torch.zeros(2, 1, 1, 2)
    x[0, 0, 0] = torch.tensor([3.0, 4.0])
    assert L.l2_prior(x).item() == pytest.approx(2.5)


def _circle(*degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1)


def chord(degrees):
    return 2 * math.sin(math.radians(degrees) / 2)


def test_pairwise_distances_on_normalised_embeddings():
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])  # normalisation removes the scale
    d = L.pairwise_distances(z)
    assert d[0, 1].item() == pytest.approx(math.sqrt(2), abs=1e-6)
    assert d[0, 2].item() == pytest.approx(2.0, abs=1e-6)
    assert d.diagonal().abs().max().item() < 1e-5


# Three images of class 0 at 0, 30 and 90 degrees; one of class 1 at 180 degrees.
EMB = _circle(0, 30, 90, 180)
LABELS = torch.tensor([0, 0, 0, 1])


def test_mining_easy_hard_positive_and_hard_negative():
    m = L.mine(L.pairwise_distances(EMB), LABELS)
    assert m.easy_positive[:3].tolist() == [1, 0, 1]
    assert m.hard_positive[:3].tolist() == [2, 2, 0]
    assert m.hard_negative.tolist() == [3, 3, 3, 2]
    assert m.has_positive.tolist() == [True, True, True, False]  # the lone class-1 image has none
    assert m.has_negative.tolist() == [True, True, True, True]


def test_easy_positive_loss_hand_computed():
    d = L.pairwise_distances(EMB)
    unbounded = L.easy_positive_loss(d, L.mine(d, LABELS), reach=None)
    assert unbounded.item() == pytest.approx(-(chord(30) + chord(30) + chord(60)) / 3, abs=1e-6)
    # with a reach of 0.6 only the two pairs at 30 degrees (0.518 apart) are still pushed
    hinged = L.easy_positive_loss(d, L.mine(d, LABELS), reach=0.6)
    assert hinged.item() == pytest.approx(2 * (0.6 - chord(30)) / 3, abs=1e-6)
    assert L.easy_positive_loss(d, L.mine(d, LABELS), reach=0.5).item() == 0.0


def test_triplet_loss_hand_computed():
    d = L.pairwise_distances(EMB)
    loss = L.triplet_loss(d, L.mine(d, LABELS), margin=0.5)
    # anchors 0, 1: hinge negative -> 0; anchor 2: d(90) - d(90) + 0.5; anchor 3 has no positive
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    loss_big_margin = L.triplet_loss(d, L.mine(d, LABELS), margin=1.0)
    expected = (chord(90) - 2 + 1) + (chord(60) - chord(150) + 1) + 1.0
    assert loss_big_margin.item() == pytest.approx(expected / 3, abs=1e-6)


def test_batch_of_one_class_has_no_negatives():
    d = L.pairwise_distances(_circle(0, 40, 100))
    m = L.mine(d, torch.tensor([5, 5, 5]))
    assert not m.has_negative.any()
    assert L.triplet_loss(d, m).item() == 0.0
    expected = -(chord(40) + chord(40) + chord(60)) / 3
    assert L.easy_positive_loss(d, m, reach=None).item() == pytest.approx(expected, abs=1e-6)


def test_every_class_single_gives_zero_diversity_losses_with_a_graph():
    z = _circle(0, 90, 180).requires_grad_(True)
    d = L.pairwise_distances(z)
    m = L.mine(d, torch.tensor([0, 1, 2]))
    ep, tri = L.easy_positive_loss(d, m), L.triplet_loss(d, m)
    assert ep.item() == 0.0 and tri.item() == 0.0
    (ep + tri).backward()  # still differentiable, gradients zero and finite
    assert torch.isfinite(z.grad).all()


def test_easy_positive_gradient_pushes_nearest_same_class_apart():
    z = _circle(0, 10, 180).float().requires_grad_(True)
    labels = torch.tensor([0, 0, 1])
    d = L.pairwise_distances(z)
    L.easy_positive_loss(d, L.mine(d, labels), reach=0.5).backward()
    with torch.no_grad():
        moved = z - 0.1 * z.grad
        assert L.pairwise_distances(moved)[0, 1] > d[0, 1]


def test_gradients_finite_for_identical_embeddings():
    z = torch.ones(4, 8, requires_grad=True)
    d = L.pairwise_distances(z)
    m = L.mine(d, torch.tensor([0, 0, 1, 1]))
    (L.easy_positive_loss(d, m, reach=None) + L.easy_positive_loss(d, m) + L.triplet_loss(d, m)).backward()
    assert torch.isfinite(z.grad).all()


def test_objective_weights_and_total():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 0, 1, 1])
    emb = torch.randn(4, 5)
    x = torch.randn(4, 1, 6, 6)
    bn_terms = [torch.tensor(1.0), torch.tensor(2.0)]
    w = LossWeights.paper(tv_l2=0.1, tv_l1=0.2, l2=0.3, bn=0.4, first_bn_multiplier=10, ep=5, triplet=0.5, margin=0.5)
    t = objective(logits, emb, bn_terms, x, labels, w)
    assert t["bn"].item() == pytest.approx(12.0)
    expected = (t["ce"] + 0.1 * t["tv_l2"] + 0.2 * t["tv_l1"] + 0.3 * t["l2"] + 0.4 * t["bn"]
                + 5 * t["ep"] + 0.5 * t["triplet"])
    assert t["total"].item() == pytest.approx(expected.item())
    plain = objective(logits, emb, bn_terms, x, labels, LossWeights.paper(ep=0, triplet=0, tv_l1=0))
    assert "ep" not in plain and "tv_l1" not in plain


def test_lr_schedule_warmup_then_cosine_to_zero():
    assert lr_at(0, 1000, 0.25, 100) == pytest.approx(0.0025)
    assert lr_at(99, 1000, 0.25, 100) == pytest.approx(0.25)
    assert lr_at(100, 1000, 0.25, 100) == pytest.approx(0.25)
    assert lr_at(550, 1000, 0.25, 100) == pytest.approx(0.125)
    assert lr_at(1000, 1000, 0.25, 100) == pytest.approx(0.0, abs=1e-12)


def test_normalized_bn_loss_is_a_weighted_mean_of_layers_relative_to_noise():
    layers = [torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0)]
    levels = torch.tensor([4.0, 3.0, 8.0])
    # (10 * 2/4 + 3/3 + 4/8) / (10 + 1 + 1)
    assert L.bn_loss(layers, 10, levels).item() == pytest.approx((5.0 + 1.0 + 0.5) / 12)
    assert L.bn_loss(levels.unbind(), 10, levels).item() == pytest.approx(1.0)  # 1 on noise, for any teacher
    with pytest.raises(ValueError, match="2 noise levels for 3"):
        L.bn_loss(layers, 10, levels[:2])


def test_per_element_priors_do_not_depend_on_batch_or_image_size():
    torch.manual_seed(0)
    small = torch.randn(2, 1, 8, 8)
    big = small.repeat(4, 3, 4, 4)  # 8 images, 3 channels, tiled 4x4: the same statistics
    for fn in (L.tv_l2, L.l2_prior):
        assert fn(big, per_element=True).item() == pytest.approx(fn(small, per_element=True).item(), rel=0.05)
        assert fn(big).item() > 3 * fn(small).item()  # the paper's form grows with the batch and the image
    x = torch.tensor([[[[3.0, 4.0]]]])  # one image of 2 pixels: ||x|| = 5, RMS = 5 / sqrt(2)
    assert L.l2_prior(x, per_element=True).item() == pytest.approx(5 / math.sqrt(2))


def test_normalized_objective_needs_noise_levels():
    w = LossWeights()
    assert w.form == "normalized" and w.bn == 100.0 and w.tv_l2 == pytest.approx(0.439, abs=1e-3)
    assert LossWeights.paper().bn == 5e-2 and LossWeights.paper(bn=1.0).bn == 1.0
    labels = torch.tensor([0, 0, 1, 1])
    args = (torch.randn(4, 3), torch.randn(4, 5), [torch.tensor(2.0)], torch.randn(4, 1, 6, 6), labels)
    with pytest.raises(ValueError, match="noise levels"):
        objective(*args, w)
    terms = objective(*args, w, torch.tensor([4.0]))
    assert terms["bn"].item() == pytest.approx(0.5)


def test_diversity_terms_report_the_share_of_active_anchors():
    # 4 images, classes 0,0,1,1 on a line: embeddings at angles so that distances are easy to reason about
    embedding = torch.tensor([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    terms = L.diversity_terms(embedding, labels, reach=0.3, margin=0.5)
    d = L.pairwise_distances(embedding)
    # easy positives: 0<->1 are 0.1 apart (< reach: active); 2<->3 are sqrt(2) apart (inactive)
    assert terms["ep_active"].item() == pytest.approx(0.5)
    assert terms["ep"].item() == pytest.approx(((0.3 - d[0, 1]) * 2 / 4).item(), abs=1e-5)
    gaps = [d[0, 1] - d[0, 2] + 0.5, d[1, 0] - d[1, 2] + 0.5, d[2, 3] - d[2, 1] + 0.5, d[3, 2] - d[3, 1] + 0.5]
    assert terms["triplet_active"].item() == pytest.approx(sum(float(g > 0) for g in gaps) / 4)
    unbounded = L.diversity_terms(embedding, labels, reach=None, margin=0.5)
    assert unbounded["ep_active"].item() == 1.0


def test_objective_keeps_activity_out_of_the_total():
    torch.manual_seed(0)
    w = LossWeights.paper(tv_l2=0.0, l2=0.0, bn=1.0, ep=2.0, triplet=3.0, margin=0.5, ep_reach=0.3)
    x = torch.randn(4, 1, 4, 4)
    logits, embedding = torch.randn(4, 3), torch.randn(4, 5)
    labels = torch.tensor([0, 0, 1, 1])
    terms = objective(logits, embedding, [torch.tensor(1.5)], x, labels, w)
    assert {"ep_active", "triplet_active"} <= set(terms)
    expected = terms["ce"] + 1.0 * terms["bn"] + 2.0 * terms["ep"] + 3.0 * terms["triplet"]
    assert terms["total"].item() == pytest.approx(expected.item())
