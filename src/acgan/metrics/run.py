"""Evaluate a checkpoint (or a second image set) against real data: what `acgan evaluate` and --eval_every call."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from acgan.config import EVAL_BATCH, EVAL_DEFAULTS
from acgan.data import ONE_SPLIT_DATASETS, ImageDataset, load_dataset, read_manifest, to_uint8
from acgan.device import resolve_device
from acgan.errors import UserError
from acgan.metrics.cacc import ImageClassifier
from acgan.metrics.cache import default_cache_dir
from acgan.metrics.classifier import Classifier, default_classifier_path, load_classifier
from acgan.metrics.detector import Detector, load_detector
from acgan.metrics.detector_files import resolve_detector_path
from acgan.metrics.evaluate import compute_metrics, format_table, parse_metrics, write_json
from acgan.models import Generator
from acgan.storage import unused_path

DETECTOR_METRICS = frozenset({"fid", "is", "kid", "pr", "ifid"})


def generator_source(G: Generator, num_samples: int, seed: int) -> Callable[[int], Iterator[tuple[torch.Tensor, ...]]]:
    """Batches of (uint8 images, labels) from G with balanced classes, drawn from a private RNG stream."""
    device = next(G.parameters()).device
    K = G.num_classes

    @torch.no_grad()
    def batches(batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=device).manual_seed(seed)  # never touches the training RNG
        was_training = G.training
        G.eval()
        try:
            for start in range(0, num_samples, batch_size):
                n = min(batch_size, num_samples - start)
                y = torch.arange(start, start + n, device=device) % K  # (n,) classes in turn: balanced
                z = torch.randn(n, G.nz, device=device, generator=gen)
                yield to_uint8(G(z, y)), y.cpu()
        finally:
            G.train(was_training)

    return batches


def needs_detector(metrics: Sequence[str]) -> bool:
    """True if any requested metric needs Inception features or probabilities."""
    return bool(DETECTOR_METRICS.intersection(parse_metrics(metrics)))


def open_detector(metrics: Sequence[str], detector: str | Path | None, device: torch.device) -> Detector | None:
    """The Inception detector when the metrics need one (fetched and verified on first use); fails now, not later."""
    if not needs_detector(metrics):
        return None
    need_logits = "is" in parse_metrics(metrics)
    precision = os.environ.get("ACGAN_DETECTOR_PRECISION") or EVAL_DEFAULTS.detector_precision
    found = load_detector(resolve_detector_path(detector, need_logits=need_logits), device=device,
                          precision=precision)
    if found.precision != "fp32":
        print(f"detector: {found.name} in {found.precision}: for watching a run, not comparable with papers' FID",
              file=sys.stderr)
    if need_logits:
        found.require_logits()
    return found


def open_classifier(metrics: Sequence[str], path: str | Path | None, reference: ImageDataset, device: torch.device,
                    *, dataset_name: str | None = None, root_dir: str | Path | None = None, split: str = "train",
                    num_workers: int = 0, classes: str | None = None,
                    class_names_file: str | None = None) -> Classifier | None:
    """The classifier for `cacc` (None when not asked for), checked against the reference's classes and size."""
    if "cacc" not in parse_metrics(metrics):
        return None
    if path is None:
        # `acgan classifier train` files a classifier under its train split's content hash. A test-split
        # reference hashes differently, so then the train split is loaded (from dataset_name, root_dir) to find it.
        if split != "train" and dataset_name is None:
            raise ValueError("open_classifier needs dataset_name to find the classifier of a test-split reference")
        train = reference if split == "train" else load_reference(dataset_name, root_dir, "train",
                                                                    reference.image_size, num_workers, classes,
                                                                    class_names_file)
        path = default_classifier_path(train.content_hash())
        if not path.is_file():
            flags = f"--dataset {dataset_name or '...'}" + (f" --root_dir {root_dir}" if root_dir is not None else "")
            flags += f" --image_size {reference.image_size}" if reference.image_size != 32 else ""
            flags += f" --classes {classes}" if classes else ""
            raise UserError(f"no classifier for this dataset at {path}: train one with `acgan classifier train "
                            f"{flags}` or pass --classifier")
    classifier = load_classifier(path, device)
    if classifier.class_names != reference.class_names:
        raise UserError(f"the classifier {path} knows the classes {_names(classifier.class_names)} but the data "
                        f"has {_names(reference.class_names)}")
    if classifier.image_size != reference.image_size:
        raise UserError(f"the classifier {path} was trained on {classifier.image_size}px images but the data is "
                        f"{reference.image_size}px: train one with --image_size {reference.image_size}")
    return classifier


def _names(class_names: Sequence[str]) -> str:
    """A short rendering of a class list for one-line errors."""
    shown = ",".join(class_names[:5])
    return f"{len(class_names)} ({shown}{',...' if len(class_names) > 5 else ''})"


def evaluate_generator(G: Generator, reference: ImageDataset, metrics: Sequence[str], *, num_samples: int,
                       detector: Detector | None, seed: int = 0, batch_size: int = EVAL_BATCH,
                       classifier: ImageClassifier | None = None) -> dict[str, float]:
    """Metrics of num_samples images from G against a reference dataset with the same classes."""
    if G.num_classes != reference.num_classes:
        raise UserError(f"the generator has {G.num_classes} classes but the reference data has "
                        f"{reference.num_classes}")
    return compute_metrics(metrics, fake_images=generator_source(G, num_samples, seed),
                           real_images=reference.images, real_labels=reference.labels,
                           num_classes=reference.num_classes, detector=detector,
                           real_key=reference.content_hash(), cache_dir=default_cache_dir(), batch_size=batch_size,
                           classifier=classifier)


def evaluate_datasets(candidate: ImageDataset, reference: ImageDataset, metrics: Sequence[str], *,
                      detector: Detector | None, batch_size: int = EVAL_BATCH,
                      classifier: ImageClassifier | None = None) -> dict[str, float]:
    """Metrics of one image set against another (e.g. CIFAR-10 test against train: a sanity check)."""
    if classifier is not None and candidate.class_names != reference.class_names:
        # cacc reads the candidate's labels as requested classes of the reference's (and classifier's) list.
        raise UserError(f"cacc needs the scored images to have the reference's classes "
                        f"{_names(reference.class_names)}, they have {_names(candidate.class_names)}")
    return compute_metrics(metrics, fake_images=(candidate.images, candidate.labels),
                           real_images=reference.images, real_labels=reference.labels,
                           num_classes=max(candidate.num_classes, reference.num_classes), detector=detector,
                           real_key=reference.content_hash(), cache_dir=default_cache_dir(), batch_size=batch_size,
                           classifier=classifier, fake_key=candidate.content_hash())


def load_reference(dataset: str, root_dir: str | Path | None, split: str, image_size: int, num_workers: int,
                   classes: str | None = None, class_names_file: str | None = None) -> ImageDataset:
    """The real images metrics compare against (a run's --classes subset of them, named as it named them)."""
    return load_dataset(dataset, root_dir, split=split, image_size=image_size, num_workers=num_workers,
                        classes=classes, class_names_file=class_names_file if dataset == "folder" else None)


def evaluate_command(args: argparse.Namespace) -> int:
    """`acgan evaluate`: score a checkpoint or a second image set, print the table, write the JSON."""
    from acgan.generator import load_generator, output_parent

    if args.num_samples < 2 or args.batch_size <= 0:
        raise UserError("--num_samples must be at least 2 and --batch_size positive")
    device = resolve_device(args.device)
    metrics = args.metrics.split(",")
    detector = open_detector(metrics, args.detector, device)
    start = time.perf_counter()
    if args.checkpoint is not None:
        trained = load_generator(args.checkpoint, device, args.weights)
        G, config, step = trained.net, trained.config, trained.step
        dataset, root_dir = args.dataset or config.dataset, args.root_dir or config.root_dir
        subset = {"classes": config.classes, "class_names_file": config.class_names_file}
        reference = load_reference(dataset, root_dir, args.split, config.image_size, args.num_workers, **subset)
        classifier = open_classifier(metrics, args.classifier, reference, device, dataset_name=dataset,
                                     root_dir=root_dir, split=args.split, num_workers=args.num_workers, **subset)
        results = evaluate_generator(G, reference, metrics, num_samples=args.num_samples, detector=detector,
                                     seed=args.seed, batch_size=args.batch_size, classifier=classifier)
        run_dir = output_parent(args.checkpoint)  # the current folder for a packaged generator
        raw = "-raw" if args.weights == "raw" else ""  # never mixed up with (or overwriting) the EMA's figures
        default_out = run_dir / "metrics" / f"step-{step:08d}{raw}.json"
    else:
        if args.dataset is None or (args.root_dir is None and args.dataset != "shapes"):
            raise UserError("--real needs --dataset and --root_dir for the reference images")
        # a folder or prepared directory is one split: its own, whatever --real_split says
        split = "train" if args.real_dataset in ONE_SPLIT_DATASETS else args.real_split
        size = read_manifest(args.real)["image_size"] if args.real_dataset == "prepared" else 32
        candidate = load_reference(args.real_dataset, args.real, split, size, args.num_workers)
        reference = load_reference(args.dataset, args.root_dir, args.split, candidate.image_size, args.num_workers)
        classifier = open_classifier(metrics, args.classifier, reference, device, dataset_name=args.dataset,
                                     root_dir=args.root_dir, split=args.split, num_workers=args.num_workers)
        results = evaluate_datasets(candidate, reference, metrics, detector=detector, batch_size=args.batch_size,
                                    classifier=classifier)
        default_out = Path("metrics.json")
    seconds = time.perf_counter() - start
    out = unused_path(args.out or default_out)
    # printed first: a disk that refuses the JSON must not take the numbers with it
    print(format_table(results))
    made = "generated and scored" if args.checkpoint is not None else f"of {args.real} scored"
    by = f", drawn by {trained.source}" if args.checkpoint is not None else ""
    print(f"{int(results['num_fake'])} images {made} in {seconds:.1f} s "
          f"({results['num_fake'] / seconds:.1f} images/s on {device}, real statistics included){by}")
    # which detector and precision made the numbers: bf16 features are other (close) numbers than fp32's
    made_by = {"detector": detector.name} if detector is not None else {}
    if args.checkpoint is not None:
        made_by["generator"] = trained.source  # "G_ema" or "G": the EMA and the raw G score differently
    write_json({**results, **made_by}, out)
    print(f"wrote {out}")
    return 0
