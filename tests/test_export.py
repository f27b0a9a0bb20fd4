"""`acgan export` and `acgan.load_generator`: a generator others can load, in three formats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import generator_checkpoint, with_ema

import acgan
from acgan.cli import main
from acgan.data import SHAPE_NAMES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return generator_checkpoint(tmp_path_factory.mktemp("export") / "last.pt", step=11, ema_decay=0.0)


def _reference(checkpoint):
    G = acgan.load_generator(checkpoint, "cpu")
    z = torch.randn(5, G.nz, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 3, 9, 3, 1])
    with torch.no_grad():
        return G, z, y, G.net(z, y)


def test_the_python_api(checkpoint):
    G = acgan.load_generator(checkpoint)
    assert G.class_names == SHAPE_NAMES and G.step == 11 and (G.nz, G.image_size) == (100, 32)
    x = G.sample(class_="square", num=6, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 32, 32)
    assert torch.equal(x, G.sample(class_=1, num=6, seed=0)) and not torch.equal(x, G.sample(class_=1, num=6, seed=1))
    assert G.sample(num=2).shape == (2 * len(SHAPE_NAMES), 3, 32, 32)  # no class: every class, one row each


def test_the_readme_example_runs(monkeypatch, tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 6 and "load_generator" in code
    monkeypatch.chdir(tmp_path)
    cifar = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    (tmp_path / "runs" / "00003-cifar10" / "checkpoints").mkdir(parents=True)
    generator_checkpoint(tmp_path / "runs" / "00003-cifar10" / "checkpoints" / "last.pt", class_names=cifar,
                         dataset="cifar10")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    images = scope["images"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)


def test_safetensors_folder_loads_like_the_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "shapes-generator"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["class_names"] == list(SHAPE_NAMES) and (meta["nz"], meta["image_size"], meta["step"]) == (100, 32, 11)
    G, z, y, expected = _reference(checkpoint)
    loaded = acgan.load_generator(out, "cpu")
    with torch.no_grad():
        assert torch.equal(loaded.net(z, y), expected)
    assert torch.equal(loaded.sample("star", 3, seed=5), G.sample("star", 3, seed=5))


def test_torchscript_runs_with_plain_torch_and_no_acgan(checkpoint, tmp_path):
    out = tmp_path / "g.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    _, z, y, expected = _reference(checkpoint)
    torch.save({"z": z, "y": y}, tmp_path / "inputs.pt")
    code = (
        "import json, sys; sys.modules['acgan'] = None\n"  # any import of acgan now fails
        "import torch\n"
        "extra = {'acgan.json': ''}\n"
        f"G = torch.jit.load({str(out)!r}, _extra_files=extra)\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(G(inputs['z'], inputs['y']), {str(tmp_path / 'out.pt')!r})\n"
        "print(json.loads(extra['acgan.json'])['class_names'][1])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "square"
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-5)


def test_onnx_matches_torch_in_onnxruntime(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    _, z, y, expected = _reference(checkpoint)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"z": z.numpy(), "y": y.numpy()})[0])
    assert got.shape == (5, 3, 32, 32) and (got - expected).abs().max() < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["class_names"] == list(SHAPE_NAMES) and meta["step"] == 11


def test_export_never_overwrites_and_names_its_problems(checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(taken)]) == 1
    assert "already exists" in capsys.readouterr().err and list(taken.iterdir()) == []
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(bad), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(checkpoint), "--format", "pickle", "--out", str(tmp_path / "y")])


def test_an_exported_folder_that_was_tampered_with_is_one_clear_error(checkpoint, tmp_path):
    out = tmp_path / "g"
    main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)])
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(acgan.generator.UserError, match="not a readable exported generator"):
        acgan.load_generator(out, "cpu")


def test_load_generator_takes_the_ema_or_asks_for_the_raw_g(tmp_path):
    plain = generator_checkpoint(tmp_path / "plain.pt", ema_decay=0.999)
    both = with_ema(plain, tmp_path / "both.pt")
    state = torch.load(both, weights_only=True)
    name = next(k for k, v in state["G"].items() if v.is_floating_point())
    ema, raw = acgan.load_generator(both, "cpu"), acgan.load_generator(both, "cpu", weights="raw")
    assert (ema.source, raw.source) == ("G_ema", "G")
    assert torch.equal(ema.net.state_dict()[name], state["G_ema"][name])
    assert torch.equal(raw.net.state_dict()[name], state["G"][name])
    assert acgan.load_generator(plain, "cpu").source == "G"  # no EMA kept: G is all there is
    with pytest.raises(acgan.generator.UserError, match="weights must be one of ema, raw"):
        acgan.load_generator(both, "cpu", weights="best")


def test_an_export_remembers_which_g_it_holds_and_has_no_raw_one(tmp_path):
    both = with_ema(generator_checkpoint(tmp_path / "plain.pt", ema_decay=0.999), tmp_path / "both.pt")
    out = tmp_path / "g"
    assert main(["export", "--checkpoint", str(both), "--format", "safetensors", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["source"] == "G_ema"
    assert acgan.load_generator(out, "cpu").source == "G_ema"
    with pytest.raises(acgan.generator.UserError, match="holds one generator"):
        acgan.load_generator(out, "cpu", weights="raw")
