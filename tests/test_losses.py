"""Losses on hand-made logits, checked against the formulas written out by hand."""

import math

import pytest
import torch

from acgan.losses import d2d_ce, d_loss_fake, d_loss_real, g_loss


def _log_softmax_at(logits, y):
    return logits[y] - math.log(sum(math.exp(v) for v in logits))


def test_d_loss_real_is_bce_to_one_plus_cross_entropy():
    source = torch.tensor([2.0, -1.0])
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    loss, stats = d_loss_real(source, logits, y)
    bce = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    ce = -(_log_softmax_at([1.0, 0.0, -1.0], 0) + _log_softmax_at([0.5, 0.5, 3.0], 1)) / 2
    assert math.isclose(loss.item(), bce + ce, rel_tol=1e-6)
    assert math.isclose(stats["D_x"].item(), (1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(1))) / 2, rel_tol=1e-6)
    assert stats["acc_real"].item() == 0.5  # first argmax 0 (right), second argmax 2 (wrong)


def test_d_loss_fake_targets_zero():
    source = torch.tensor([0.0, 3.0])
    logits = torch.zeros(2, 4)
    loss, stats = d_loss_fake(source, logits, torch.tensor([1, 2]))
    bce = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-3.0)))) / 2
    assert math.isclose(loss.item(), bce + math.log(4), rel_tol=1e-6)
    assert math.isclose(stats["D_G_z1"].item(), (0.5 + 1 / (1 + math.exp(-3))) / 2, rel_tol=1e-6)


def test_g_loss_is_non_saturating_and_conditional():
    logits = torch.tensor([[5.0, 0.0]])
    loss_right, _ = g_loss(torch.tensor([0.0]), logits, torch.tensor([0]))
    loss_wrong, _ = g_loss(torch.tensor([0.0]), logits, torch.tensor([1]))
    assert math.isclose(loss_right.item(), math.log(2) + -_log_softmax_at([5.0, 0.0], 0), rel_tol=1e-6)
    assert loss_wrong > loss_right  # the class term rewards G for the requested class
    # fooling D more (higher source logit) lowers G's loss, with a non-vanishing gradient when D wins
    src = torch.tensor([-8.0], requires_grad=True)
    g_loss(src, logits, torch.tensor([0]))[0].backward()
    assert src.grad.abs().item() > 0.9


def test_g_cls_weight_scales_only_the_class_term():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    loss, _ = g_loss(torch.tensor([1.0]), logits, torch.tensor([2]), cls_weight=0.5)
    source = -math.log(_sigmoid(1.0))  # non-saturating: -log D(G(z))
    assert math.isclose(loss.item(), source - 0.5 * _log_softmax_at([2.0, -1.0, 0.5], 2), rel_tol=1e-6)


def test_losses_are_fp32_for_bf16_logits():
    loss, _ = d_loss_real(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, 5, dtype=torch.bfloat16),
                          torch.tensor([0, 1, 2]))
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), math.log(2) + math.log(5), rel_tol=1e-6)


def _sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_hinge_losses_match_hand_values_and_keep_sigmoid_stats():
    s = torch.tensor([2.0, 0.5, -1.0])
    logits, y = torch.zeros(3, 4), torch.tensor([0, 1, 2])  # CE of uniform logits is log(4)
    loss_r, stats_r = d_loss_real(s, logits, y, loss="hinge")
    loss_f, stats_f = d_loss_fake(s, logits, y, loss="hinge")
    loss_g, stats_g = g_loss(s, logits, y, loss="hinge")
    # relu(1 - s) = [0, 0.5, 2]; relu(1 + s) = [3, 1.5, 0]; -s = [-2, -0.5, 1]
    assert math.isclose(loss_r.item(), 2.5 / 3 + math.log(4), rel_tol=1e-6)
    assert math.isclose(loss_f.item(), 4.5 / 3 + math.log(4), rel_tol=1e-6)
    assert math.isclose(loss_g.item(), -1.5 / 3 + math.log(4), rel_tol=1e-6)
    mean_sigmoid = (_sigmoid(2.0) + _sigmoid(0.5) + _sigmoid(-1.0)) / 3
    for stat in (stats_r["D_x"], stats_f["D_G_z1"], stats_g["D_G_z2"]):
        assert math.isclose(stat.item(), mean_sigmoid, rel_tol=1e-6)


def test_stats_keys_are_the_same_for_every_option():
    s, y = torch.zeros(2), torch.tensor([0, 1])
    proxies = torch.eye(2)
    for kwargs, class_out in [({}, torch.zeros(2, 2)), ({"loss": "hinge", "proxies": proxies}, torch.eye(2))]:
        assert set(d_loss_real(s, class_out, y, **kwargs)[1]) == {"loss_D_real", "D_x", "acc_real"}
        assert set(d_loss_fake(s, class_out, y, **kwargs)[1]) == {"loss_D_fake", "D_G_z1", "acc_fake"}
        assert set(g_loss(s, class_out, y, **kwargs)[1]) == {"loss_G", "D_G_z2"}


def test_unknown_source_loss_is_rejected():
    with pytest.raises(ValueError, match="source loss"):
        d_loss_real(torch.zeros(2), torch.zeros(2, 3), torch.tensor([0, 1]), loss="wgan")
    with pytest.raises(ValueError, match="class loss"):
        d_loss_fake(torch.zeros(2), torch.zeros(2, 3), torch.tensor([0, 1]), cls_loss="focal")


def test_ce_real_trains_d_classifier_on_real_images_only():
    s, logits, y = torch.tensor([0.0, 0.0]), torch.zeros(2, 4, requires_grad=True), torch.tensor([0, 3])
    loss_paper, _ = d_loss_fake(s, logits, y, cls_loss="ce")
    loss_real_only, stats = d_loss_fake(s, logits, y, cls_loss="ce_real")
    assert math.isclose(loss_paper.item(), math.log(2) + math.log(4), rel_tol=1e-6)  # BCE(0 | 0) + CE(uniform)
    assert math.isclose(loss_real_only.item(), math.log(2), rel_tol=1e-6)  # the source term alone
    assert not loss_real_only.requires_grad  # no gradient reaches the class head from fakes
    assert stats["acc_fake"].item() == 0.5  # still reported: arg-max of uniform logits is class 0


# Three samples, E = 2: e0 = (1, 0) class 0, e1 = (0, 1) class 1, e2 = (1, 1) class 0 (cosines to e0, e1 are
# 1/sqrt 2); proxies v0 = (1, 0), v1 = (0, 2) (normalised to (0, 1)). Temperature 0.5, m_p 0.98, m_n 0.02.
_EMBED = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
_PROXIES = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
_Y = torch.tensor([0, 1, 0])


def _d2dce_by_hand():
    t, m_p, m_n, r = 0.5, 0.98, 0.02, 1 / math.sqrt(2)
    pos = [min(1.0 - m_p, 0) / t, min(1.0 - m_p, 0) / t, min(r - m_p, 0) / t]  # cos to own proxy: 1, 1, r

    def neg(cos):
        return max(cos - m_n, 0) / t

    # negatives, same-class pairs (0, 2) left out: sample 0 -> {1} (cos 0); sample 1 -> {0 (cos 0), 2 (cos r)};
    # sample 2 -> {1} (cos r)
    terms = [
        -pos[0] + math.log(math.exp(pos[0]) + math.exp(neg(0.0))),
        -pos[1] + math.log(math.exp(pos[1]) + math.exp(neg(0.0)) + math.exp(neg(r))),
        -pos[2] + math.log(math.exp(pos[2]) + math.exp(neg(r))),
    ]
    return sum(terms) / 3


def test_d2dce_matches_the_formula_on_a_hand_computed_batch():
    assert math.isclose(d2d_ce(_EMBED, _PROXIES, _Y).item(), _d2dce_by_hand(), rel_tol=1e-6)
    loss, _ = d_loss_real(torch.tensor([0.0, 0.0, 0.0]), _EMBED, _Y, proxies=_PROXIES)
    assert math.isclose(loss.item(), math.log(2) + _d2dce_by_hand(), rel_tol=1e-6)
    loss_g, _ = g_loss(torch.tensor([0.0, 0.0, 0.0]), _EMBED, _Y, proxies=_PROXIES)
    assert math.isclose(loss_g.item(), math.log(2) + _d2dce_by_hand(), rel_tol=1e-6)


def test_d2dce_with_one_class_keeps_only_the_data_to_proxy_term():
    # no negatives: each row's softmax holds only exp(pos_i), so l_i = -log(exp(pos_i) / exp(pos_i)) = 0,
    # whatever the embeddings and however far they sit from the proxy
    embed = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = d2d_ce(embed, torch.randn(4, 3), torch.full((5,), 2))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(embed.grad).all() and embed.grad.abs().max().item() == 0.0


def test_d2dce_gradients_are_finite_and_fp32_for_bf16_inputs():
    gen = torch.Generator().manual_seed(1)
    embed = torch.randn(8, 16, generator=gen).to(torch.bfloat16).requires_grad_()
    proxies = torch.randn(4, 16, generator=gen).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss, _ = g_loss(torch.zeros(8), embed, y, proxies=proxies)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    for grad in (embed.grad, proxies.grad):
        assert torch.isfinite(grad.float()).all() and grad.abs().sum().item() > 0


def test_d2dce_accuracy_uses_the_nearest_proxy():
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    embed = torch.tensor([[3.0, 0.5], [0.1, 2.0], [-5.0, 1.0], [-0.2, 1.0]])  # nearest proxies: 0, 1, 2, 1
    y = torch.tensor([0, 1, 2, 0])
    _, stats = d_loss_real(torch.zeros(4), embed, y, proxies=proxies)
    assert stats["acc_real"].item() == 0.75


def test_d2dce_fake_loss_for_d_has_no_class_term():
    source = torch.tensor([0.0, 3.0, -1.0])
    embed = torch.randn(3, 2, requires_grad=True)
    loss, stats = d_loss_fake(source, embed, _Y, loss="hinge", cls_loss="d2dce", proxies=_PROXIES)
    assert math.isclose(loss.item(), (1.0 + 4.0 + 0.0) / 3, rel_tol=1e-6)  # relu(1 + s) only
    assert "acc_fake" in stats and not loss.requires_grad  # the embedding is not part of D's fake loss


def test_the_trainer_settles_the_objective_once():
    from acgan.config import TrainConfig
    from acgan.distributed import DistInfo
    from acgan.trainer import build_trainer

    cpu = torch.device("cpu")
    d2d = build_trainer(TrainConfig(arch="sndcgan", cls_loss="d2dce", diffaug="translation,color"), 10, cpu, DistInfo())
    obj = d2d.objective
    assert obj.proxies is d2d.D_raw.proxies  # D's own parameter: optimizer steps and checkpoint loads reach it
    assert (obj.source_loss, obj.augment, obj.d_learns_classes_from_fakes) == ("hinge", ("translation", "color"),
                                                                               False)
    paper = build_trainer(TrainConfig(), 10, cpu, DistInfo()).objective
    assert (paper.source_loss, paper.cls_loss, paper.augment, paper.proxies) == ("bce", "ce", (), None)
    assert paper.d_learns_classes_from_fakes and paper.g_cls_weight == 1.0  # the paper's weight unless asked
    assert build_trainer(TrainConfig(g_cls_weight=0.5), 10, cpu, DistInfo()).objective.g_cls_weight == 0.5
    x = torch.rand(2, 3, 32, 32)
    assert paper.view(x) is x and not torch.equal(obj.view(x), x)


def test_objective_gives_what_the_loss_functions_give():
    from acgan.losses import Objective

    s, logits, y = torch.tensor([0.3, -1.0]), torch.randn(2, 4), torch.tensor([1, 3])
    obj = Objective("hinge", "ce_real")
    assert torch.equal(obj.d_real(s, logits, y)[0], d_loss_real(s, logits, y, loss="hinge")[0])
    assert torch.equal(obj.d_fake(s, logits, y)[0], d_loss_fake(s, logits, y, loss="hinge", cls_loss="ce_real")[0])
    assert torch.equal(obj.g(s, logits, y)[0], g_loss(s, logits, y, loss="hinge")[0])
    half = Objective("hinge", "ce_real", g_cls_weight=0.5)
    assert torch.equal(half.g(s, logits, y)[0], g_loss(s, logits, y, loss="hinge", cls_weight=0.5)[0])


# The twin class losses on one hand-made sample, K = 2: logits [real 0, real 1, generated 0, generated 1].
_TWIN = torch.tensor([[2.0, 0.0, 1.0, -1.0]])


def test_adc_reads_the_2k_logits_as_one_softmax():
    y, s = torch.tensor([0]), torch.tensor([0.0])
    logits = [2.0, 0.0, 1.0, -1.0]
    loss_r, stats_r = d_loss_real(s, _TWIN, y, cls_loss="adc")
    loss_f, _ = d_loss_fake(s, _TWIN, y, cls_loss="adc")
    loss_g, _ = g_loss(s, _TWIN, y, cls_loss="adc", cls_weight=0.5)
    assert math.isclose(loss_r.item(), math.log(2) - _log_softmax_at(logits, 0), rel_tol=1e-6)  # real class 0
    assert math.isclose(loss_f.item(), math.log(2) - _log_softmax_at(logits, 2), rel_tol=1e-6)  # generated class 0
    # G: -log p(real 0 | x) + log p(generated 0 | x) = the difference of the two logits, 2 - 1
    assert math.isclose(loss_g.item(), math.log(2) - 0.5 * (2.0 - 1.0), rel_tol=1e-6)
    assert stats_r["acc_real"].item() == 1.0  # read from the real-class half


def test_tac_reads_the_2k_logits_as_two_k_way_classifiers():
    y, s = torch.tensor([1]), torch.tensor([0.0])
    loss_r, stats_r = d_loss_real(s, _TWIN, y, cls_loss="tac")
    loss_f, stats_f = d_loss_fake(s, _TWIN, y, cls_loss="tac")
    loss_g, _ = g_loss(s, _TWIN, y, cls_loss="tac")
    ce_real, ce_fake = -_log_softmax_at([2.0, 0.0], 1), -_log_softmax_at([1.0, -1.0], 1)
    assert math.isclose(loss_r.item(), math.log(2) + ce_real, rel_tol=1e-6)
    assert math.isclose(loss_f.item(), math.log(2) + ce_fake, rel_tol=1e-6)
    assert math.isclose(loss_g.item(), math.log(2) + ce_real - ce_fake, rel_tol=1e-6)
    assert stats_r["acc_real"].item() == 0.0 and stats_f["acc_fake"].item() == 0.0  # the real half says class 0


def test_twin_g_term_pays_nothing_for_an_image_d_knows_g_draws():
    # The ce_real collapse: an image the real-data classifier reads surely is worth the most to G under ce_real.
    # Under adc/tac, once D also reads it as "generated class 0" just as surely, G's class term is 0.
    y, s = torch.tensor([0]), torch.tensor([0.0])
    known = torch.tensor([[6.0, 0.0, 6.0, 0.0]])
    for cls_loss in ("adc", "tac"):
        loss, _ = g_loss(s, known, y, cls_loss=cls_loss)
        assert math.isclose(loss.item(), math.log(2), abs_tol=1e-6)  # the source term alone
    ce_real, _ = g_loss(s, known[:, :2], y, cls_loss="ce_real")
    assert ce_real.item() < math.log(2) + 0.01  # ce_real still pays G for it (class term ~ 0, its minimum)


def test_twin_losses_give_d_and_g_gradients_on_their_own_halves():
    y, s = torch.tensor([1, 0]), torch.zeros(2)
    for cls_loss in ("adc", "tac"):
        logits = torch.randn(2, 4, requires_grad=True)
        d_loss_fake(s, logits, y, cls_loss=cls_loss)[0].backward()
        if cls_loss == "tac":  # the twin classifier of generated images alone learns from fakes
            assert logits.grad[:, :2].abs().sum() == 0 and logits.grad[:, 2:].abs().sum() > 0
        else:  # one softmax: every logit moves
            assert logits.grad.abs().sum() > 0
        assert logits.grad.dtype == torch.float32


def test_the_trainer_builds_twin_heads_for_tac_and_adc():
    from acgan.config import TrainConfig
    from acgan.distributed import DistInfo
    from acgan.trainer import build_trainer

    for arch in ("paper", "sndcgan"):
        tr = build_trainer(TrainConfig(arch=arch, cls_loss="adc"), 10, torch.device("cpu"), DistInfo())
        assert tr.D_raw.fc_class.out_features == 20 and tr.objective.cls_loss == "adc"
        tr.D_raw.eval()
        source, class_out = tr.D_raw(torch.rand(3, 3, 32, 32))
        assert source.shape == (3,) and class_out.shape == (3, 20)
    plain = build_trainer(TrainConfig(recipe="tuned"), 10, torch.device("cpu"), DistInfo())
    assert plain.D_raw.fc_class.out_features == 10  # ce_real keeps the paper's head (and its checkpoints)
