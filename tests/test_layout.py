"""Memory layout: channels_last nets compute what NCHW nets compute, and a run resumes across layouts."""

import io

import pytest
import torch
from torch import nn

from acgan.config import TrainConfig
from acgan.distributed import DistInfo
from acgan.precision import autocast
from acgan.trainer import StepOptions, build_trainer, restore_trainer, train_step, trainer_state

CPU = torch.device("cpu")
NCHW, NHWC = torch.contiguous_format, torch.channels_last


def _trainer(layout: torch.memory_format, arch: str = "paper"):
    torch.manual_seed(0)
    config = TrainConfig(arch=arch, d_dropout=0.0, ema_decay=0.999)  # with an EMA of G, which is laid out too
    return build_trainer(config, 10, CPU, DistInfo(), memory_format=layout)


def _conv_weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_the_nets_are_laid_out_as_asked():
    for layout in (NHWC, NCHW):
        tr = _trainer(layout)
        weights = _conv_weights(tr.G_raw) + _conv_weights(tr.D_raw) + _conv_weights(tr.G_ema)
        assert all(w.is_contiguous(memory_format=layout) for w in weights)
        assert (layout == NCHW) == all(w.is_contiguous() for w in weights)


@pytest.mark.parametrize("arch", ["paper", "sndcgan"])
def test_channels_last_computes_what_nchw_computes(arch):
    nhwc, nchw = _trainer(NHWC, arch), _trainer(NCHW, arch)
    gen = torch.Generator().manual_seed(1)
    z, y = torch.randn(8, 100, generator=gen), torch.arange(8)
    x = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1
    r_img, r_src = torch.randn(8, 3, 32, 32, generator=gen), torch.randn(8, generator=gen)
    for tr in (nhwc, nchw):  # weighted sums, so that every output element gets its own gradient
        source, class_out = tr.D(x)
        ((source * r_src).sum() + class_out.logsumexp(1).sum() + (tr.G(z, y) * r_img).sum()).backward()
    for net_a, net_b in ((nhwc.G_raw, nchw.G_raw), (nhwc.D_raw, nchw.D_raw)):
        # the whole gradient, not each tensor: a conv bias before BatchNorm has an exact gradient of zero, so its
        # computed one is rounding noise in either layout
        a, b = (torch.cat([p.grad.flatten() for p in net.parameters()]) for net in (net_a, net_b))
        assert (a - b).norm() <= 1e-5 * b.norm()  # summation order differs, nothing else


def test_an_nchw_checkpoint_resumes_on_channels_last_nets():
    saved = _trainer(NCHW)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # Adam moments that differ from element to element
        train_step(saved, torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1, torch.arange(8), StepOptions(100, 10),
                   autocast(CPU, "fp32"))
    resumed = _trainer(NHWC)
    buffer = io.BytesIO()  # through a file, as a checkpoint goes: the resumed run shares no tensor with the saved one
    torch.save(trainer_state(saved, TrainConfig(), tuple("0123456789"), 1), buffer)
    buffer.seek(0)
    restore_trainer(resumed, torch.load(buffer, weights_only=True), DistInfo(), seed=0)
    # the same gradient in both: the resumed optimizer must take exactly the step the saved one takes
    for opt_a, opt_b, net_a, net_b in ((saved.opt_D, resumed.opt_D, saved.D_raw, resumed.D_raw),
                                       (saved.opt_G, resumed.opt_G, saved.G_raw, resumed.G_raw)):
        for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = torch.empty_like(b).copy_(a.grad)
        opt_a.step()
        opt_b.step()
        for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
            assert b.stride() == opt_b.state[b]["exp_avg"].stride()
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
