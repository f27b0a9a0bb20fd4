"""--classes and --class_names: which classes a spec picks, how they are renumbered, how folders get names."""

from __future__ import annotations

import pytest
import torch

from acgan.data import ImageDataset, load_dataset, parse_classes, read_class_names, select_classes
from acgan.errors import UserError

KEYS = ("n01", "n02", "n03", "n04", "n05")
NAMES = ("tench", "goldfish", "shark", "7-9", "3")


def test_indices_ranges_names_and_keys_all_select_sorted_unique_classes():
    assert parse_classes("0-2", KEYS) == [0, 1, 2]
    assert parse_classes("4,1,1", KEYS) == [1, 4]
    assert parse_classes("shark,n01", KEYS, NAMES) == [0, 2]
    assert parse_classes(" goldfish , 0-1 ", KEYS, NAMES) == [0, 1]


def test_a_class_named_like_a_number_or_range_is_taken_by_name():
    assert parse_classes("3", KEYS, NAMES) == [4]  # the class called "3", not index 3
    assert parse_classes("7-9", KEYS, NAMES) == [3]


@pytest.mark.parametrize("spec, message", [("0-7", "within 0-4"), ("3-1", "within 0-4"), ("whale", "no class named"),
                                           ("1,,2", "empty entry"), ("9", "within 0-4")])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_classes(spec, KEYS, NAMES)


def test_select_classes_keeps_order_of_images_and_renumbers_labels():
    labels = torch.tensor([0, 3, 1, 3, 0, 2])
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    data = select_classes(ImageDataset(images, labels, ("a", "b", "c", "d")), [3, 0])
    assert data.class_names == ("a", "d")
    assert data.labels.tolist() == [0, 1, 1, 0]  # a -> 0, d -> 1
    assert data.images[:, 0, 0, 0].tolist() == [0, 1, 3, 4]  # the images of rows 0, 1, 3, 4, in order


def test_selecting_classes_of_cifar_matches_filtering_by_hand(tmp_path):
    from tests.data_fixtures import write_cifar

    write_cifar(tmp_path, num_per_file=30)
    full = load_dataset("cifar10", tmp_path)
    sub = load_dataset("cifar10", tmp_path, classes="cat,1")
    keep = (full.labels == 1) | (full.labels == 3)
    assert sub.class_names == ("automobile", "cat")
    assert torch.equal(sub.images, full.images[keep])
    assert torch.equal(sub.labels, (full.labels[keep] == 3).long())


def test_class_names_files_in_text_and_json_name_the_folders(tmp_path):
    text = tmp_path / "LOC_synset_mapping.txt"
    text.write_text("n01 tench, Tinca tinca\nn02 crane\nn03 crane\n\n")
    assert read_class_names(text, ("n01", "n02", "n03")) == ("tench, Tinca tinca", "crane (n02)", "crane (n03)")
    js = tmp_path / "names.json"
    js.write_text('{"n01": "tench", "n02": "goldfish"}')
    assert read_class_names(js, ("n02",)) == ("goldfish",)
    with pytest.raises(UserError, match="no name for class 'n09'"):
        read_class_names(js, ("n01", "n09"))
    (tmp_path / "bad.txt").write_text("n01\n")
    with pytest.raises(UserError, match="line 1"):
        read_class_names(tmp_path / "bad.txt", ("n01",))


def test_a_folder_subset_decodes_only_the_chosen_classes(tmp_path):
    from PIL import Image

    for name in ("n01", "n02", "n03"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name / "a.JPEG")  # ImageNet's upper-case suffix
    (tmp_path / "n02" / "a.JPEG").write_bytes(b"broken")  # never opened: n02 is not chosen
    names = tmp_path / "map.txt"
    names.write_text("n01 tench\nn02 goldfish\nn03 shark\n")
    data = load_dataset("folder", tmp_path, image_size=8, classes="shark,n01", class_names_file=names)
    assert data.class_names == ("tench", "shark") and data.labels.tolist() == [0, 1]
