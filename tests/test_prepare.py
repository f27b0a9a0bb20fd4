"""acgan prepare: a prepared directory holds exactly what the in-RAM loaders give, resumes, and names bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acgan.cli import main
from acgan.data import load_dataset, open_prepared, read_manifest
from acgan.data import prepare as prep
from acgan.data.prepare import decoded_source, folder_source, prepare
from acgan.errors import UserError
from tests.data_fixtures import write_cifar

CLASSES = ("cat", "dog", "fox")
_real_finish = prep._finish  # kept, for tests that stop a run before it and then let one finish


def make_jpeg_folder(root: Path, per_class: int = 7, size: int = 20, seed: int = 0) -> Path:
    """root/<class>/*.jpg (and one .png): random non-square-free images that need a resize to 16."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 4 * (i % 2), 3), dtype=np.uint8)
            suffix = ".png" if i == 0 else ".jpg"
            Image.fromarray(pixels).save(root / name / f"{c}-{i:03d}{suffix}")
    return root


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 images, so a 21-image folder has six chunks to finish, interrupt and resume."""
    monkeypatch.setattr(prep, "CHUNK_IMAGES", 4)


def test_prepared_folder_holds_what_the_in_ram_loader_decodes(tmp_path, small_chunks):
    src = make_jpeg_folder(tmp_path / "src")
    manifest = prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    in_ram = load_dataset("folder", src, image_size=16)
    prepared = open_prepared(tmp_path / "out")
    assert torch.equal(prepared.images, in_ram.images) and torch.equal(prepared.labels, in_ram.labels)
    assert prepared.class_names == in_ram.class_names == CLASSES
    # the same content hash as the in-RAM data: cached FID statistics serve both
    assert prepared.content_hash() == in_ram.content_hash() == manifest["content_hash"]
    assert manifest["num_images"] == 21 and manifest["image_size"] == 16 and manifest["skipped"] == []
    assert manifest["source"]["dataset"] == "folder" and manifest["source"]["root_dir"] == str(src.resolve())
    assert not (tmp_path / "out" / "progress.json").exists()


def test_prepared_cifar_matches_load_cifar_including_its_hash(tmp_path):
    write_cifar(tmp_path / "cifar", num_per_file=6)
    prepare(decoded_source("cifar10", tmp_path / "cifar", 32), tmp_path / "out", show_progress=False)
    in_ram = load_dataset("cifar10", tmp_path / "cifar")
    prepared = open_prepared(tmp_path / "out")
    assert torch.equal(prepared.images, in_ram.images) and torch.equal(prepared.labels, in_ram.labels)
    assert prepared.content_hash() == in_ram.content_hash()


def test_worker_processes_write_the_same_file_as_one_process(tmp_path, small_chunks):
    src = make_jpeg_folder(tmp_path / "src")
    prepare(folder_source(src, 16), tmp_path / "one", num_workers=0, show_progress=False)
    prepare(folder_source(src, 16), tmp_path / "two", num_workers=2, show_progress=False)
    assert (tmp_path / "one" / "images.u8").read_bytes() == (tmp_path / "two" / "images.u8").read_bytes()


def test_an_interrupted_prepare_resumes_and_decodes_only_what_is_left(tmp_path, small_chunks, monkeypatch):
    src = make_jpeg_folder(tmp_path / "src")
    real_write, written = prep.write_chunk, []

    def dies_after_three(part, start, *args):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(start)
        return real_write(part, start, *args)

    monkeypatch.setattr(prep, "write_chunk", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(UserError, match="has not finished"):
        open_prepared(tmp_path / "out")
    written.clear()
    def records(part, start, *args):
        written.append(start)
        return real_write(part, start, *args)

    monkeypatch.setattr(prep, "write_chunk", records)
    prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    assert written == [12, 16, 20]  # the chunks of images 0-11 were kept
    assert torch.equal(open_prepared(tmp_path / "out").images, load_dataset("folder", src, image_size=16).images)


def test_a_file_changed_since_the_interruption_is_decoded_again(tmp_path, small_chunks, monkeypatch):
    src = make_jpeg_folder(tmp_path / "src")
    source = folder_source(src, 16)
    monkeypatch.setattr(prep, "_finish", lambda *a: None)  # stop after the chunks, as an interruption would
    prepare(source, tmp_path / "out", num_workers=0, show_progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(prep, "CHUNK_IMAGES", 4)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(source.paths[5])  # chunk 1
    prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    redone = open_prepared(tmp_path / "out").images[5].float()  # (3, 16, 16): JPEG's red is near, not exactly, 255
    assert redone[0].mean() > 240 and redone[1:].mean() < 15


def test_a_corrupt_image_is_named_or_left_out_and_listed(tmp_path, small_chunks):
    src = make_jpeg_folder(tmp_path / "src")
    bad = src / "dog" / "1-003.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=r"1-003\.jpg.*--skip_bad"):
        prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    manifest = prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, skip_bad=True, show_progress=False)
    assert manifest["num_images"] == 20
    assert [s["file"] for s in manifest["skipped"]] == [str(Path("dog") / "1-003.jpg")]
    bad.unlink()  # the folder without the bad file decodes to exactly the images that were kept
    good = load_dataset("folder", src, image_size=16)
    prepared = open_prepared(tmp_path / "out")
    assert torch.equal(prepared.images, good.images) and torch.equal(prepared.labels, good.labels)


def test_out_dirs_that_hold_something_else_are_refused_and_a_finished_one_is_kept(tmp_path, capsys):
    src = make_jpeg_folder(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare(folder_source(src, 16), tmp_path / "busy", show_progress=False)
    prepare(folder_source(src, 16), tmp_path / "out", show_progress=False)
    before = (tmp_path / "out" / "images.u8").stat().st_mtime_ns
    prepare(folder_source(src, 16), tmp_path / "out", show_progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "out" / "images.u8").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="another prepared dataset"):
        prepare(folder_source(src, 24), tmp_path / "out", show_progress=False)


def test_damaged_prepared_directories_are_one_line_errors(tmp_path):
    src = make_jpeg_folder(tmp_path / "src")
    prepare(folder_source(src, 16), tmp_path / "out", show_progress=False)
    with open(tmp_path / "out" / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="damaged or missing"):
        open_prepared(tmp_path / "out")
    (tmp_path / "out" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        read_manifest(tmp_path / "out")
    with pytest.raises(UserError, match="not a prepared dataset"):
        open_prepared(tmp_path / "src")


def test_prepare_cli_with_classes_and_a_class_names_file(tmp_path, capsys):
    src = make_jpeg_folder(tmp_path / "src")
    names = tmp_path / "names.txt"
    names.write_text("cat Felis catus\ndog Canis familiaris\nfox Vulpes vulpes\n")
    out = tmp_path / "out"
    code = main(["prepare", "--root_dir", str(src), "--image_size", "16", "--out", str(out), "--classes", "fox,cat",
                 "--class_names", str(names), "--num_workers", "0"])
    assert code == 0 and "acgan train --dataset prepared --root_dir" in capsys.readouterr().out
    data = open_prepared(out)
    assert data.class_names == ("Felis catus", "Vulpes vulpes")  # renumbered in their order: cat 0, fox 1
    assert data.labels.tolist() == [0] * 7 + [1] * 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["class_keys"] == ["cat", "fox"] and manifest["source"]["classes"] == "fox,cat"
    assert main(["prepare", "--root_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_bad_file_fixed_before_the_resume_is_taken_in(tmp_path, small_chunks, monkeypatch):
    src = make_jpeg_folder(tmp_path / "src")
    bad = src / "dog" / "1-003.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"broken")
    monkeypatch.setattr(prep, "_finish", lambda *a: None)  # stopped after the chunks, before the manifest
    prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, skip_bad=True, show_progress=False)
    monkeypatch.setattr(prep, "_finish", _real_finish)
    with pytest.raises(UserError, match=r"1-003\.jpg"):  # without --skip_bad the verdict on record still stops it
        prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    bad.write_bytes(good)
    manifest = prepare(folder_source(src, 16), tmp_path / "out", num_workers=0, show_progress=False)
    assert manifest["num_images"] == 21 and manifest["skipped"] == []
