"""The paper's networks: exact parameter counts, output shapes, conditioning input, initialisation."""

import pytest
import torch

from acgan.errors import UserError
from acgan.models import Discriminator, Generator, count_parameters


def test_paper_parameter_counts_for_cifar10():
    assert count_parameters(Generator(nz=100, num_classes=10)) == 1_594_227
    assert count_parameters(Discriminator(num_classes=10)) == 1_664_875


@pytest.mark.parametrize("num_classes", [2, 10, 100])
@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes_for_any_class_count_and_size(num_classes, image_size):
    G, D = Generator(100, num_classes, image_size), Discriminator(num_classes, image_size)
    z, y = torch.randn(4, 100), torch.randint(0, num_classes, (4,))
    x = G(z, y)
    assert x.shape == (4, 3, image_size, image_size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output
    source, logits = D(x)
    assert source.shape == (4,) and logits.shape == (4, num_classes)


def test_class_count_changes_only_the_class_dependent_layers():
    # G's input layer grows by nz+K -> 384 weights per class; D's class head by 8192+1 per class
    assert count_parameters(Generator(100, 11)) - count_parameters(Generator(100, 10)) == 384
    assert count_parameters(Discriminator(11)) - count_parameters(Discriminator(10)) == 8192 + 1


def test_generator_output_depends_on_the_class():
    G = Generator(100, 10).eval()
    z = torch.randn(1, 100).repeat(2, 1)
    x = G(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])


def test_dcgan_initialisation():
    torch.manual_seed(0)
    D = Discriminator(10)
    w = D.net[0].weight
    assert abs(w.std().item() - 0.02) < 0.003 and abs(w.mean().item()) < 0.003
    bn = next(m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert abs(bn.weight.mean().item() - 1) < 0.01 and abs(bn.weight.std().item() - 0.02) < 0.01
    assert all((m.bias == 0).all() for m in D.modules() if isinstance(m, torch.nn.Conv2d))


def test_unsupported_image_size_is_a_user_error():
    with pytest.raises(UserError, match="image_size"):
        Generator(100, 10, image_size=48)


def test_bit_dropout_matches_dropout_statistics():
    from acgan.models import BitDropout

    drop = BitDropout(0.5)
    x = torch.ones(64, 32, 9, 7)  # odd sizes: the mask must cover every element exactly
    y = drop(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y == 0).float().mean().item() - 0.5) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02  # unbiased: E[y] = x
    y.requires_grad_(False)
    x = torch.randn(1000, requires_grad=True)
    out = drop(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).float() * 2)  # gradient flows only through kept units, scaled
    assert torch.equal(drop.eval()(x), x)


def test_bit_dropout_masks_are_independent_across_calls_and_positions():
    from acgan.models import BitDropout

    drop = BitDropout(0.5)
    a, b = drop(torch.ones(100_000)) > 0, drop(torch.ones(100_000)) > 0
    agreement = (a == b).float().mean().item()
    assert abs(agreement - 0.5) < 0.01  # two calls draw fresh masks
    neighbours = (a[:-1] == a[1:]).float().mean().item()
    assert abs(neighbours - 0.5) < 0.01  # bits of one byte are not correlated


def test_paper_discriminator_with_embed_dim_swaps_the_class_head_for_an_embedding_and_proxies():
    D = Discriminator(num_classes=10, embed_dim=16)
    # the class head becomes 8192 -> 16; the (10, 16) proxies are new
    assert count_parameters(D) == 1_664_875 - (8192 * 10 + 10) + (8192 * 16 + 16) + 10 * 16
    source, embedding = D.eval()(torch.randn(3, 3, 32, 32))
    assert source.shape == (3,) and embedding.shape == (3, 16) and D.proxies.shape == (10, 16)
    assert Discriminator(10).proxies is None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dense_transposed_conv_is_the_transposed_conv_it_replaces(bias, layout):
    # G's 1x1 -> 4x4 layer runs as a matmul: same output, gradients and state_dict as nn.ConvTranspose2d
    from acgan.models.layers import DenseConvTranspose2d

    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(12, 5, 4, 1, 0, bias=bias).double()
    dense = DenseConvTranspose2d(12, 5, 4, 1, 0, bias=bias).double()
    dense.load_state_dict(conv.state_dict())
    dense.to(memory_format=layout)
    x = torch.randn(3, 12, 1, 1, dtype=torch.float64)
    out_conv, out_dense = conv(x), dense(x)
    assert out_dense.shape == (3, 5, 4, 4)
    torch.testing.assert_close(out_dense, out_conv, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out_conv)
    out_conv.backward(grad)
    out_dense.backward(grad)
    for p_conv, p_dense in zip(conv.parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p_dense.grad, p_conv.grad, rtol=1e-12, atol=1e-12)
    # inputs larger than 1x1 fall back to the transposed conv itself
    x_big = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(dense(x_big), conv(x_big), rtol=1e-12, atol=1e-12)


def test_dense_transposed_conv_keeps_autocast_dtype():
    from acgan.models.layers import DenseConvTranspose2d

    dense = DenseConvTranspose2d(8, 4, 4, 1, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dense(torch.randn(2, 8, 1, 1))
    assert out.dtype == torch.bfloat16  # the conv it replaces gives bf16 here; the next BN expects the same
