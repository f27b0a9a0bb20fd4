"""Every arch behind build_nets: shapes, hand-derived parameter counts, spectral norm, conditioning, gradients."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from acgan.errors import UserError
from acgan.models import ARCHS, BitDropout, CondBatchNorm2d, build_generator, build_nets, count_parameters

SIZES = {"paper": (32, 64, 128), "sndcgan": (32, 64, 128), "resnet": (32, 64, 128), "imagenet": (128,)}
SMALLEST = [(arch, SIZES[arch][0]) for arch in ARCHS]


# Parameter counts of single layers, written out so the expected totals below follow from the layer plan alone.
def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # shared gain and bias


def cbn(c: int, num_classes: int) -> int:
    return 2 * c * num_classes  # a gain and a bias per class


def heads(num_features: int, num_classes: int) -> int:
    return linear(num_features, 1) + linear(num_features, num_classes)


def class_swap_inputs(nz: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, nz).repeat(2, 1), torch.tensor([0, 1])  # same z, classes 0 and 1


@pytest.mark.parametrize("arch,size", [(a, s) for a in ARCHS for s in SIZES[a]])
def test_output_shapes_range_and_proxies_for_every_arch_and_size(arch, size):
    torch.manual_seed(0)
    for num_classes, embed_dim in [(10, None), (3, 16)]:
        G, D = build_nets(arch, 100, num_classes, size, embed_dim=embed_dim)
        G.eval(), D.eval()
        assert (G.nz, G.num_classes, G.image_size) == (100, num_classes, size)
        assert (D.num_classes, D.image_size) == (num_classes, size)
        with torch.no_grad():
            x = G(torch.randn(2, 100), torch.tensor([0, num_classes - 1]))
            source, class_out = D(x)
        assert x.shape == (2, 3, size, size)
        assert x.min() >= -1 and x.max() <= 1  # tanh output
        assert source.shape == (2,)
        if embed_dim is None:
            assert class_out.shape == (2, num_classes) and D.proxies is None
        else:
            assert class_out.shape == (2, embed_dim)
            assert isinstance(D.proxies, nn.Parameter) and D.proxies.shape == (num_classes, embed_dim)


def test_sndcgan_32px_parameter_counts_follow_the_layer_plan():
    nz, K = 128, 10
    G_cond = linear(nz, 256 * 16, bias=False) + cbn(256, K) + conv(32, 3, 3)
    G_cond += sum(conv(a, b, 3, bias=False) + cbn(b, K) for a, b in [(256, 128), (128, 64), (64, 32)])
    G_plain = linear(nz + K, 256 * 16, bias=False) + bn(256) + conv(32, 3, 3)
    G_plain += sum(conv(a, b, 3, bias=False) + bn(b) for a, b in [(256, 128), (128, 64), (64, 32)])
    plan = [(3, 64, 3), (64, 64, 4), (64, 128, 3), (128, 128, 4), (128, 256, 3), (256, 256, 4), (256, 512, 3)]
    D_convs = sum(conv(a, b, k) for a, b, k in plan)
    G, D = build_nets("sndcgan", nz, K, 32)
    assert count_parameters(G) == G_cond
    assert count_parameters(build_nets("sndcgan", nz, K, 32, cond_bn=False)[0]) == G_plain
    assert count_parameters(D) == D_convs + heads(512 * 4 * 4, K)
    D_embed = build_nets("sndcgan", nz, K, 32, embed_dim=16)[1]
    assert count_parameters(D_embed) == D_convs + linear(8192, 1) + linear(8192, 16) + K * 16  # + proxies


def test_imagenet_parameter_counts_follow_the_paper_table():
    nz, K = 100, 10
    G_expected = linear(nz + K, 768 * 8 * 8) + conv(192, 3, 5)
    G_expected += sum(conv(a, b, 5) + bn(b) for a, b in [(768, 384), (384, 256), (256, 192)])
    D_expected = conv(3, 16, 3) + heads(512 * 16 * 16, K)
    D_expected += sum(conv(a, b, 3) + bn(b) for a, b in [(16, 32), (32, 64), (64, 128), (128, 256), (256, 512)])
    G, D = build_nets("imagenet", nz, K, 128)
    assert count_parameters(G) == G_expected
    assert count_parameters(D) == D_expected


def test_resnet_32px_parameter_counts_follow_sngan_cifar():
    nz, K = 128, 10
    block = 2 * cbn(256, K) + 2 * conv(256, 256, 3, bias=False) + conv(256, 256, 1, bias=False)
    G_expected = linear(nz, 256 * 16) + 3 * block + cbn(256, K) + conv(256, 3, 3)
    first = conv(3, 128, 3) + conv(128, 128, 3) + conv(3, 128, 1)
    down = 2 * conv(128, 128, 3) + conv(128, 128, 1)
    D_expected = first + down + 2 * (2 * conv(128, 128, 3)) + heads(128, K)
    G, D = build_nets("resnet", nz, K, 32)
    assert count_parameters(G) == G_expected
    assert count_parameters(D) == D_expected


@pytest.mark.parametrize("size,bn_channels", [(32, 3 * (256 + 256) + 256), (64, 1024 + 768 + 384 + 192 + 64)])
def test_resnet_class_dependent_parameters_grow_per_class(size, bn_channels):
    # cond-BN: one gain and one bias per BN channel per class; D: one more row of the class head
    G10, D10 = build_nets("resnet", 128, 10, size)
    G11, D11 = build_nets("resnet", 128, 11, size)
    assert count_parameters(G11) - count_parameters(G10) == 2 * bn_channels
    assert count_parameters(D11) - count_parameters(D10) == D10.fc_class.in_features + 1
    # with cond_bn off the class enters through z instead: one more input column of the 4x4 projection
    G_plain10 = build_nets("resnet", 128, 10, size, cond_bn=False)[0]
    G_plain11 = build_nets("resnet", 128, 11, size, cond_bn=False)[0]
    assert count_parameters(G_plain11) - count_parameters(G_plain10) == G_plain10.fc.out_features


@pytest.mark.parametrize("arch", ["sndcgan", "resnet"])
def test_spectral_norm_on_every_d_layer_and_no_g_layer(arch):
    G, D = build_nets(arch, 128, 10, 32, embed_dim=16)
    d_layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(d_layers) >= 7 and all(parametrize.is_parametrized(m, "weight") for m in d_layers)
    assert not any(parametrize.is_parametrized(m) for m in G.modules())
    D.eval()
    sigma = torch.linalg.matrix_norm(D.fc_source.weight, ord=2)  # a (1, F) matrix: power iteration is exact
    assert abs(sigma.item() - 1) < 1e-3


# the paper's nets have one way to condition (one-hot concatenated to z); sndcgan and resnet have two
CONDITIONINGS = [(a, s, c) for a, s in SMALLEST for c in ((True, False) if a in ("sndcgan", "resnet") else (True,))]


@pytest.mark.parametrize("arch,size,cond_bn", CONDITIONINGS)
def test_generator_output_depends_on_the_class(arch, size, cond_bn):
    torch.manual_seed(0)
    G = build_nets(arch, 100, 10, size, cond_bn=cond_bn)[0].eval()
    with torch.no_grad():  # every class starts with gain 1, bias 0: give them the distinct values training would
        for m in G.modules():
            if isinstance(m, CondBatchNorm2d):
                m.gain.weight.normal_(1, 0.1), m.bias.weight.normal_(0, 0.1)
        x = G(*class_swap_inputs(100))
    assert not torch.allclose(x[0], x[1], atol=1e-4)


@pytest.mark.parametrize("arch,size", SMALLEST)
def test_one_backward_reaches_every_parameter_of_g_and_d_and_the_proxies(arch, size):
    # with embed_dim the class head is a linear layer like the logits head, plus the proxies: one run covers both
    torch.manual_seed(0)
    G, D = build_nets(arch, 100, 3, size, embed_dim=16)
    G.eval(), D.eval()  # batch of 2: running BN statistics, no dropout
    source, embedding = D(G(torch.randn(2, 100), torch.tensor([0, 2])))
    loss = source.sum() + (embedding @ D.proxies.T).sum()  # ReACGAN compares embeddings with the proxies
    loss.backward()
    for name, p in [*G.named_parameters(prefix="G"), *D.named_parameters(prefix="D")]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["paper", "sndcgan", "resnet"])
def test_heads_keep_the_autocast_dtype(arch):
    D = build_nets(arch, 100, 10, 32, embed_dim=16)[1].eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        source, class_out = D(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert source.dtype == class_out.dtype == torch.bfloat16


def test_unknown_arch_or_unsupported_size_is_a_user_error():
    with pytest.raises(UserError, match="--arch"):
        build_nets("vgg", 100, 10, 32)
    with pytest.raises(UserError, match="--image_size"):
        build_nets("sndcgan", 100, 10, 48)
    with pytest.raises(UserError, match="--image_size"):
        build_nets("resnet", 100, 10, 256)
    with pytest.raises(UserError, match="--image_size"):
        build_nets("imagenet", 100, 10, 32)
    with pytest.raises(UserError, match="--embed_dim"):
        build_nets("paper", 100, 10, 32, embed_dim=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_build_generator_alone_matches_the_g_of_build_nets(arch):
    size = 128 if arch == "imagenet" else 32
    torch.manual_seed(0)
    G_alone = build_generator(arch, 100, 10, size)
    torch.manual_seed(0)
    G_pair, _ = build_nets(arch, 100, 10, size)
    a, b = G_alone.state_dict(), G_pair.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # a checkpoint's G loads into either


@pytest.mark.parametrize("arch,size", [("paper", 32), ("imagenet", 128)])
def test_d_dropout_sets_the_paper_ds_dropout_and_zero_makes_d_deterministic_in_training(arch, size):
    x = torch.randn(4, 3, size, size)
    for p in (0.5, 0.0):
        torch.manual_seed(0)
        D = build_nets(arch, 100, 10, size, d_dropout=p)[1].train()
        assert {m.p for m in D.modules() if isinstance(m, BitDropout)} == {p}
        with torch.no_grad():
            same = torch.equal(D(x)[0], D(x)[0])  # BN uses batch statistics in both passes: only dropout differs
        assert same == (p == 0.0)
