"""DiffAugment: shapes and dtypes kept, gradients reach the input, and each transform does what it says."""

import pytest
import torch

from acgan.augment import diff_augment
from acgan.config import DIFFAUG_POLICIES, parse_diffaug
from acgan.errors import UserError

ALL = ",".join(DIFFAUG_POLICIES)


@pytest.mark.parametrize("policy", [*DIFFAUG_POLICIES, ALL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (2, 3, 8, 12)])
def test_each_policy_keeps_shape_and_dtype(policy, dtype, shape):
    x = torch.rand(shape).to(dtype)
    out = diff_augment(x, policy)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


def test_policy_keeps_dtype_under_bf16_autocast():
    x = torch.rand(2, 3, 8, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = diff_augment(x, ALL)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("policy", [*DIFFAUG_POLICIES, ALL])
def test_gradient_flows_to_the_input(policy):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    diff_augment(x, policy).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum().item() > 0


def test_translation_moves_a_bright_pixel_by_at_most_an_eighth_of_the_side():
    torch.manual_seed(0)
    S, max_shift = 32, 4
    x = torch.zeros(64, 1, S, S)
    x[:, :, 16, 16] = 1.0
    out = diff_augment(x, "translation")
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(64))  # moved, not smeared or lost (centre stays inside)
    where = out[:, 0].flatten(1).argmax(dim=1)  # (64,)
    dy, dx = where // S - 16, where % S - 16
    assert dy.abs().max().item() <= max_shift and dx.abs().max().item() <= max_shift
    assert ((dy != 0) | (dx != 0)).any()


def test_translation_fills_with_zeros_instead_of_wrapping_around():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 0, 0] = 1.0  # a corner pixel: shifted out of the frame for some images
    out = diff_augment(x, "translation")
    totals = out.sum(dim=(1, 2, 3))
    assert set(totals.tolist()) == {0.0, 1.0}
    assert out[:, :, 8:, :].sum().item() == 0 and out[:, :, :, 8:].sum().item() == 0  # never on the far side


def test_cutout_zeroes_one_half_side_square_clipped_at_the_edges():
    torch.manual_seed(0)
    S, half = 32, 16
    out = diff_augment(torch.ones(256, 3, S, S), "cutout")
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same square on every channel
    zero = out[:, 0] == 0  # (256, S, S)
    inside = 0
    for mask in zero:
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        height, width = len(rows), len(cols)
        assert height * width == mask.sum().item()  # a solid rectangle
        assert height <= half and width <= half
        touches_edge = rows[0] == 0 or rows[-1] == S - 1 or cols[0] == 0 or cols[-1] == S - 1
        if not touches_edge:
            assert mask.sum().item() == half * half
            inside += 1
    assert inside > 0


def test_color_on_flat_images_is_a_brightness_shift_within_half():
    # a flat image has nothing to saturate or contrast, so only the brightness offset is left
    torch.manual_seed(0)
    x = torch.full((64, 3, 8, 8), 0.25)
    out = diff_augment(x, "color")
    offset = out - x
    per_image = offset[:, 0, 0, 0]  # (64,)
    assert torch.allclose(offset, per_image[:, None, None, None].expand_as(offset), atol=1e-6)
    assert per_image.abs().max().item() <= 0.5 and per_image.std().item() > 0.1


def test_color_changes_image_means_and_spread():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = diff_augment(x, "color")
    assert not torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-3)
    assert not torch.allclose(out.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), atol=1e-3)


@pytest.mark.parametrize("policy", ["", "none", " None "])
def test_empty_policy_is_identity(policy):
    x = torch.rand(2, 3, 8, 8)
    assert diff_augment(x, policy) is x


def test_same_seed_gives_the_same_output():
    x = torch.rand(8, 3, 16, 16)
    torch.manual_seed(7)
    a = diff_augment(x, ALL)
    torch.manual_seed(7)
    b = diff_augment(x, ALL)
    c = diff_augment(x, ALL)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_parse_diffaug_validates_names():
    assert parse_diffaug("color, translation,cutout") == ("color", "translation", "cutout")
    assert parse_diffaug("cutout") == ("cutout",)
    assert parse_diffaug("none") == () and parse_diffaug("") == ()
    with pytest.raises(UserError, match="unknown augmentation 'flip'"):
        parse_diffaug("color,flip")
    with pytest.raises(UserError, match="twice"):
        parse_diffaug("color,color")
    with pytest.raises(UserError, match="unknown"):
        parse_diffaug("color,")

