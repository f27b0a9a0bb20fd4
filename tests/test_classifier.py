"""The cacc classifier: the metric's arithmetic, training, the file format, and `acgan classifier train` end to end."""

import json
import math
from contextlib import redirect_stdout
from io import StringIO

import pytest
import torch

from acgan.cli import main
from acgan.data import ImageDataset, load_dataset
from acgan.errors import UserError
from acgan.metrics.cacc import classifier_accuracy
from acgan.metrics.classifier import (
    PAD,
    ClassifierNet,
    accuracy,
    augment,
    default_classifier_path,
    load_classifier,
    save_classifier,
    split_holdout,
    train_classifier,
)
from acgan.metrics.evaluate import format_table
from acgan.metrics.run import evaluate_datasets, open_classifier

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: small convolutions crawl when threads oversubscribe a busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`acgan classifier train` for one epoch on shapes (a narrow net, to keep the test fast): (path, stdout)."""
    path = tmp_path_factory.mktemp("clf") / "shapes.pt"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = StringIO()
        with redirect_stdout(out):
            code = main(["classifier", "train", "--dataset", "shapes", "--epochs", "1", "--width", "8",
                         "--device", "cpu", "--out", str(path)])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return path, out.getvalue()


def test_classifier_accuracy_counts_hits_overall_and_per_class():
    predicted = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    requested = torch.tensor([0, 1, 1, 2, 2, 0, 1])
    out = classifier_accuracy(predicted, requested, num_classes=4)
    assert out["cacc"] == 5 / 7
    assert out["cacc_class_0"] == 1 / 2 and out["cacc_class_1"] == 2 / 3 and out["cacc_class_2"] == 1.0
    assert math.isnan(out["cacc_class_3"])  # no image asked for class 3
    with pytest.raises(ValueError):
        classifier_accuracy(predicted[:3], requested, 4)


def test_augment_without_shift_or_flip_is_the_identity_and_flip_mirrors():
    x = torch.randn(3, 3, 8, 8)
    centre = torch.full((2, 3), PAD)
    assert torch.equal(augment(x, centre, torch.zeros(3, dtype=torch.bool)), x)
    assert torch.equal(augment(x, centre, torch.ones(3, dtype=torch.bool)), x.flip(3))
    shifted = augment(x, torch.tensor([[PAD + 1] * 3, [PAD] * 3]), torch.zeros(3, dtype=torch.bool))
    assert torch.equal(shifted[:, :, :-1], x[:, :, 1:])  # one row down in the padded image


def test_net_takes_any_supported_image_size():
    net = ClassifierNet(num_classes=7, width=2).eval()
    for size in (32, 64, 128):
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_cli_train_writes_a_weights_only_file_with_high_test_accuracy(trained):
    path, stdout = trained
    assert "epoch 1/1" in stdout and f"wrote {path}" in stdout
    state = torch.load(path, weights_only=True)
    assert state["format"] == 1 and state["arch"] == {"num_classes": 10, "width": 8}
    assert state["dataset_key"] == load_dataset("shapes", None, split="train", seed=0).content_hash()
    clf = load_classifier(path, CPU)
    # Measured 1.0 after this one epoch (39 steps, 11 s on one busy core): shapes is easy; a regression drops far.
    assert clf.test_accuracy > 0.9 and clf.image_size == 32 and clf.class_names[0] == "circle"


def test_cacc_of_the_real_test_split_equals_the_classifiers_test_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    train, test = (load_dataset("shapes", None, split=split, seed=0) for split in ("train", "test"))
    # A deliberately weak classifier (a few steps on a few images): its per-class accuracies differ, so the
    # equality below is not the trivial 1.0 == 1.0 of a perfect one.
    few = ImageDataset(train.images[:640], train.labels[:640], train.class_names)
    net, acc = train_classifier(few, test, epochs=2, batch_size=32, width=4, lr=0.4, device=CPU, log=None)
    save_classifier(net, default_classifier_path(train.content_hash()), class_names=train.class_names,
                    dataset_key=train.content_hash(), image_size=32, test_accuracy=acc)
    out = tmp_path / "m.json"
    # The reference is the test split: the classifier is still found under the train split's hash.
    assert main(["evaluate", "--real", "unused", "--real_dataset", "shapes", "--real_split", "test",
                 "--dataset", "shapes", "--split", "test", "--metrics", "cacc", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["cacc"] == acc == results["cacc_real_test"]
    assert 0.15 < acc < 0.95  # measured 0.74: far from one class for all (0.1) and from perfect
    per_class = [results[f"cacc_class_{c}"] for c in range(10)]
    assert len(set(per_class)) > 1 and sum(per_class) / 10 == pytest.approx(acc)  # shapes test is balanced
    assert "cacc_real_test" in capsys.readouterr().out


def test_cli_refuses_to_overwrite_a_classifier(trained, capsys):
    path, _ = trained
    before = path.read_bytes()
    assert main(["classifier", "train", "--dataset", "shapes", "--epochs", "1", "--out", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and path.read_bytes() == before


def test_missing_default_classifier_is_one_line_naming_the_train_command(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "empty"))
    code = main(["evaluate", "--real", "unused", "--real_dataset", "shapes", "--dataset", "shapes",
                 "--metrics", "cacc", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert str(tmp_path / "empty" / "classifiers") in err[0] and "acgan classifier train --dataset shapes" in err[0]


def _tiny(num_classes: int = 3, n: int = 32, size: int = 8, names: tuple[str, ...] | None = None) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % num_classes
    return ImageDataset(images, labels, names or tuple(f"c{i}" for i in range(num_classes)))


def test_save_load_round_trip_predicts_the_same_and_cacc_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path))
    data = _tiny()
    train, test = split_holdout(data, fraction=0.25)
    assert len(train) == 24 and len(test) == 8
    net, acc = train_classifier(train, test, epochs=2, batch_size=8, width=2, device=CPU, log=None)
    assert acc == accuracy(net, test, CPU)
    path = save_classifier(net, default_classifier_path(data.content_hash()), class_names=data.class_names,
                           dataset_key=data.content_hash(), image_size=8, test_accuracy=acc)
    clf = open_classifier(["cacc"], None, data, CPU, dataset_name="folder")
    assert torch.equal(clf(test.images), net(test.images.float() / 127.5 - 1))
    results = evaluate_datasets(test, data, ["cacc"], detector=None, classifier=clf)
    assert results["cacc"] == acc and "cacc " in format_table(results)
    with pytest.raises(UserError, match="already exists"):
        save_classifier(net, path, class_names=data.class_names, dataset_key="x", image_size=8, test_accuracy=acc)


def test_open_classifier_refuses_other_classes_or_sizes(tmp_path):
    data = _tiny()
    net, _ = train_classifier(data, None, epochs=1, batch_size=8, width=2, device=CPU, log=None)
    path = save_classifier(net, tmp_path / "c.pt", class_names=data.class_names, dataset_key="k", image_size=8,
                           test_accuracy=0.5)
    assert open_classifier(["fid"], path, data, CPU, dataset_name="folder") is None  # not asked for
    with pytest.raises(UserError, match="knows the classes 3"):
        open_classifier(["cacc"], path, _tiny(names=("a", "b", "c")), CPU, dataset_name="folder")
    with pytest.raises(UserError, match="trained on 8px"):
        open_classifier(["cacc"], path, _tiny(size=16), CPU, dataset_name="folder")


def test_foreign_or_damaged_files_are_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable classifier"):
        load_classifier(garbage, CPU)
    foreign = tmp_path / "foreign.pt"
    torch.save({"G": {}, "D": {}}, foreign)
    with pytest.raises(UserError, match="not an acgan classifier"):
        load_classifier(foreign, CPU)
    with pytest.raises(UserError, match="classifier not found"):
        load_classifier(tmp_path / "missing.pt", CPU)
