"""Packaged generators: `acgan.load_generator("cifar10")` with no download, the CLI taking the same name, the
precedence of a user's own files, scripts/ship_generator.py, and the shipped card naming the shipped file's hash."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from data_fixtures import generator_checkpoint, with_ema

import acgan
from acgan import zoo
from acgan.cli import main
from acgan.errors import UserError
from acgan.export import export_generator
from acgan.generator import CONFIG_FILE, WEIGHTS_FILE, load_generator, output_parent

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ROOT = zoo.PRETRAINED_ROOT  # the real package folder, read before any test points the module elsewhere
CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CARD = """# A test generator

Trained with `acgan train --dataset cifar10 --recipe tuned --max_steps 5` on 2 cores of a test CPU,
wall time 1 min. FID-10k 999, recall 0.00, per-class intra-FID: cat 999.
"""


def _cifar_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return generator_checkpoint(path, step=step, class_names=CIFAR, dataset="cifar10")


@pytest.fixture(scope="module")
def package_root(tmp_path_factory) -> Path:
    """A stand-in for acgan/pretrained/: cifar10/ holds an export of a fresh (untrained) CIFAR-10 generator."""
    root = tmp_path_factory.mktemp("pretrained")
    ckpt = _cifar_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", step=3)
    export_generator(load_generator(ckpt, "cpu"), "safetensors", root / "cifar10")
    return root


@pytest.fixture
def packaged(package_root, monkeypatch, tmp_path) -> Path:
    """The packaged cifar10 folder, with the module pointed at it and the current folder an empty temp one."""
    monkeypatch.setattr(zoo, "PRETRAINED_ROOT", package_root)
    monkeypatch.chdir(tmp_path)
    return package_root / "cifar10"


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_packaged_name_loads_the_packaged_generator_and_draws_a_cat(packaged):
    G = acgan.load_generator("cifar10", "cpu")
    assert G.class_names == CIFAR and G.step == 3
    x = G.sample(class_="cat", num=4, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    assert torch.equal(x, load_generator(packaged, "cpu").sample(class_="cat", num=4, seed=0))


def test_a_users_export_folder_or_checkpoint_named_cifar10_comes_first(packaged, tmp_path, monkeypatch):
    own = _cifar_checkpoint(tmp_path / "own" / "last.pt", step=41)
    export_generator(load_generator(own, "cpu"), "safetensors", tmp_path / "export" / "cifar10")
    _cifar_checkpoint(tmp_path / "file" / "cifar10", step=42)  # a checkpoint file that happens to be so named
    monkeypatch.chdir(tmp_path / "export")
    assert load_generator("cifar10", "cpu").step == 41
    monkeypatch.chdir(tmp_path / "file")
    assert load_generator("cifar10", "cpu").step == 42


def test_a_data_folder_named_cifar10_does_not_shadow_the_packaged_one(packaged, tmp_path):
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)  # where --root_dir cifar10 keeps CIFAR
    assert load_generator("cifar10", "cpu").step == 3
    assert load_generator(Path("cifar10"), "cpu").step == 3  # as the CLI passes it: a Path spelled as the name
    with pytest.raises(UserError, match="is a folder without model.safetensors"):
        load_generator(tmp_path / "cifar10", "cpu")  # a path that is more than the name is only a path


def test_missing_packaged_weights_are_one_line_that_says_so(packaged, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(zoo, "PRETRAINED_ROOT", tmp_path / "empty")
    with pytest.raises(UserError, match="packaged generator 'cifar10' is not in this install") as e:
        load_generator("cifar10", "cpu")
    assert "\n" not in str(e.value)
    assert main(["sample", "--checkpoint", "cifar10", "--class", "cat"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in this install" in err[0]
    assert not (tmp_path / "generated").exists()  # nothing made before the weights were found


def test_an_unknown_name_that_is_no_path_lists_what_is_accepted(packaged):
    with pytest.raises(UserError, match=r"checkpoint not found: cifar11 \(.*packaged generator: cifar10\)"):
        load_generator("cifar11", "cpu")


def test_acgan_sample_with_the_name_writes_into_the_current_folder_not_the_package(packaged, tmp_path, capsys):
    before = _files(packaged)
    args = ["sample", "--checkpoint", "cifar10", "--class", "cat", "--num", "4", "--device", "cpu"]
    assert main(args) == 0 and main(args) == 0
    first, second = sorted((tmp_path / "generated").iterdir())
    assert first.name == "00000-step3" and second.name == "00001-step3"  # numbered, never overwritten
    assert sorted(p.name for p in first.iterdir()) == [*(f"cat-{i:04d}.png" for i in range(4)), "cat-grid.png"]
    assert _files(packaged) == before and "generated/00000-step3" in capsys.readouterr().out


def test_output_of_a_packaged_generator_goes_to_the_current_folder(packaged, tmp_path):
    assert output_parent("cifar10") == Path(".") and output_parent(packaged) == Path(".")
    run_ckpt = tmp_path / "runs" / "00001-x" / "checkpoints" / "last.pt"
    assert output_parent(run_ckpt) == tmp_path / "runs" / "00001-x"  # a run's checkpoint: its run folder


def test_acgan_serve_takes_the_name(packaged, monkeypatch):
    from fastapi.testclient import TestClient

    from acgan.serve import create_app

    served = []
    monkeypatch.setattr("acgan.serve.serve", lambda gen, host, port: served.append(gen))
    assert main(["serve", "--checkpoint", "cifar10", "--device", "cpu"]) == 0
    info = TestClient(create_app(served[0])).get("/api/info").json()
    assert info["classes"] == list(CIFAR) and info["step"] == 3


def test_acgan_export_of_the_name_writes_the_same_weights(packaged, tmp_path):
    assert main(["export", "--checkpoint", "cifar10", "--format", "safetensors", "--out", "out"]) == 0
    assert zoo.file_sha256(tmp_path / "out" / WEIGHTS_FILE) == zoo.file_sha256(packaged / WEIGHTS_FILE)


def test_pip_install_ships_every_file_of_a_packaged_generator():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, what the project's machines run
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["acgan"]
    for name in zoo.PRETRAINED:
        for file in (WEIGHTS_FILE, CONFIG_FILE, zoo.CARD_FILE):
            assert any(fnmatch.fnmatch(f"pretrained/{name}/{file}", g) for g in globs), (name, file)


@pytest.mark.parametrize("name", zoo.PRETRAINED)
def test_the_shipped_card_names_the_hash_of_the_shipped_file(name):
    folder = SHIPPED_ROOT / name
    if not (folder / WEIGHTS_FILE).is_file():
        pytest.skip(f"{name}: {WEIGHTS_FILE} is not shipped yet (scripts/ship_generator.py puts it there)")
    assert zoo.card_sha256(name) == zoo.file_sha256(folder / WEIGHTS_FILE), "the card describes other weights"
    card = (folder / zoo.CARD_FILE).read_text()
    assert zoo.card_missing(card) == []
    assert zoo.card_step(card) == json.loads((folder / CONFIG_FILE).read_text())["step"]
    G = acgan.load_generator(name, "cpu")
    assert G.sample(class_=0, num=2).shape == (2, 3, G.image_size, G.image_size)


# --- scripts/ship_generator.py -------------------------------------------------------------------------------


@pytest.fixture
def ship_script():
    spec = importlib.util.spec_from_file_location("ship_generator", ROOT / "scripts" / "ship_generator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ship(module, ckpt: Path, card: Path, root: Path, *extra: str) -> int:
    return module.main(["--checkpoint", str(ckpt), "--name", "cifar10", "--card", str(card), "--dest_root",
                        str(root), *extra])


def test_ship_generator_writes_the_ema_weights_config_and_a_card_with_their_hash(ship_script, tmp_path,
                                                                                 monkeypatch):
    run = tmp_path / "00007-cifar10" / "checkpoints"
    plain = _cifar_checkpoint(run / "plain.pt", step=5)
    ckpt = with_ema(plain, run / "ckpt-5.pt")
    (tmp_path / "card.md").write_text(CARD)
    root = tmp_path / "pretrained"
    assert _ship(ship_script, ckpt, tmp_path / "card.md", root) == 0
    dest = root / "cifar10"
    assert sorted(p.name for p in dest.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, zoo.CARD_FILE])
    monkeypatch.setattr(zoo, "PRETRAINED_ROOT", root)
    assert zoo.card_sha256("cifar10") == zoo.file_sha256(dest / WEIGHTS_FILE)
    card = (dest / zoo.CARD_FILE).read_text()
    assert card.startswith(CARD) and zoo.card_step(card) == 5 and zoo.card_missing(card) == []
    assert "G_ema" in card and "00007-cifar10/checkpoints/ckpt-5.pt" in card and "arch paper" in card
    monkeypatch.chdir(tmp_path)
    shipped = load_generator("cifar10", "cpu")
    assert shipped.source == "G_ema"
    assert torch.equal(shipped.sample("cat", 2), load_generator(ckpt, "cpu").sample("cat", 2))  # the EMA, not G
    # shipping the shipped card again (same weights) rewrites it with one generated section, not two
    assert _ship(ship_script, ckpt, dest / zoo.CARD_FILE, root) == 0
    assert (dest / zoo.CARD_FILE).read_text() == card


def test_ship_generator_replaces_another_model_only_with_force(ship_script, tmp_path, capsys):
    run = tmp_path / "run" / "checkpoints"
    plain = _cifar_checkpoint(run / "plain.pt", step=5)
    ema = with_ema(plain, run / "ema.pt")
    (tmp_path / "card.md").write_text(CARD)
    root = tmp_path / "pretrained"
    assert _ship(ship_script, plain, tmp_path / "card.md", root) == 0
    weights = root / "cifar10" / WEIGHTS_FILE
    first = zoo.file_sha256(weights)
    capsys.readouterr()
    assert _ship(ship_script, ema, tmp_path / "card.md", root) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds another generator" in err[0] and "--force" in err[0]
    assert zoo.file_sha256(weights) == first and [p.name for p in root.iterdir()] == ["cifar10"]  # no debris
    assert _ship(ship_script, ema, tmp_path / "card.md", root, "--force") == 0
    assert zoo.file_sha256(weights) != first


def test_ship_generator_refuses_a_card_that_leaves_out_the_numbers(ship_script, tmp_path, capsys):
    ckpt = _cifar_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", step=5)
    (tmp_path / "card.md").write_text("# A generator\n\nTrained with `acgan train` on a CPU; FID-10k 40.\n")
    assert _ship(ship_script, ckpt, tmp_path / "card.md", tmp_path / "pretrained") == 1
    err = capsys.readouterr().err
    assert "the wall time" in err and "recall" in err and "per-class intra-FID" in err
    assert not (tmp_path / "pretrained" / "cifar10").exists()


def test_ship_generator_refuses_a_name_load_generator_would_not_find(ship_script, tmp_path, capsys):
    ckpt = _cifar_checkpoint(tmp_path / "last.pt", step=5)
    (tmp_path / "card.md").write_text(CARD)
    code = ship_script.main(["--checkpoint", str(ckpt), "--name", "cifar11", "--card", str(tmp_path / "card.md"),
                             "--dest_root", str(tmp_path / "pretrained")])
    assert code == 1 and "acgan.zoo.PRETRAINED" in capsys.readouterr().err

