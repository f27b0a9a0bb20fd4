"""Install a trained generator into the package, with its model card, so `acgan.load_generator(NAME)` finds it.

    python scripts/ship_generator.py --checkpoint RUN/checkpoints/ckpt-N.pt --name cifar10 --card card.md

Writes src/acgan/pretrained/NAME/: model.safetensors + config.json (the checkpoint's EMA of G, exactly as
`acgan export --format safetensors` writes it) and MODEL_CARD.md = the card given (written by hand, with the
numbers measured) followed by a generated section: the sha256 and size of model.safetensors, the training step,
the source checkpoint and its config. Measure the card's numbers on the shipped file (`acgan evaluate
--checkpoint NAME`) so that they and the hash describe the same weights. Another model already there is replaced
only with --force; shipping the same weights again just rewrites the card.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from acgan.errors import UserError
from acgan.export import export_generator
from acgan.generator import CONFIG_FILE, WEIGHTS_FILE, TrainedGenerator, load_generator
from acgan.zoo import CARD_FILE, PRETRAINED, PRETRAINED_ROOT, card_body, card_footer, card_missing, file_sha256


def config_summary(G: TrainedGenerator) -> str:
    """The choices that tell one trained generator from another, as one line of the card."""
    c = G.config
    return (f"arch {c.arch}, cls_loss {c.cls_loss}, recipe {c.recipe}, loss {c.loss}, g_cls_weight {c.g_cls_weight}, "
            f"g_cond {c.g_cond}, diffaug {c.diffaug}, ema_decay {c.ema_decay}, dataset {c.dataset}, "
            f"{len(G.class_names)} classes, nz {c.nz}, image size {c.image_size}, batch size {c.batch_size}, "
            f"seed {c.seed}")


def read_card(card: Path) -> str:
    """The hand-written part of a card, refused when it leaves out what every card must name."""
    try:
        text = card_body(card.read_text())
    except OSError as e:
        raise UserError(f"cannot read the card {card}: {e.strerror or e}") from None
    missing = card_missing(text)
    if missing:
        raise UserError(f"the card {card} does not name {', '.join(missing)}: every shipped card must")
    return text


def ship(checkpoint: Path, name: str, card: Path, dest_root: Path = PRETRAINED_ROOT, force: bool = False) -> Path:
    """Export the checkpoint's generator into dest_root/name with its card; returns that folder."""
    if name not in PRETRAINED:
        raise UserError(f"--name {name!r} is not a packaged name ({', '.join(PRETRAINED)}): add it to "
                        "acgan.zoo.PRETRAINED first, so that load_generator finds it")
    body = read_card(card)  # before the export: a card to fix should cost no time
    G = load_generator(checkpoint, "cpu", "ema")
    dest = dest_root / name
    dest_root.mkdir(parents=True, exist_ok=True)
    # Written beside the destination and moved in by renames on the same disk, so that no reader ever sees a
    # half-written weights file; the card goes last, so its hash never names weights that are not there.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_root))
    try:
        staged = export_generator(G, "safetensors", tmp / name)
        sha256, size = file_sha256(staged / WEIGHTS_FILE), (staged / WEIGHTS_FILE).stat().st_size
        old = dest / WEIGHTS_FILE
        if old.is_file() and not force and (old_sha := file_sha256(old)) != sha256:
            raise UserError(f"{dest} already holds another generator (sha256 {old_sha[:12]}..., this one "
                            f"{sha256[:12]}...): pass --force to replace it")
        source = "/".join(checkpoint.resolve().parts[-3:])  # <run>/checkpoints/ckpt-N.pt, not the whole disk path
        footer = card_footer(sha256, size, G.step, G.source, source, config_summary(G))
        (staged / CARD_FILE).write_text(body + footer)
        dest.mkdir(exist_ok=True)
        for file in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
            os.chmod(staged / file, 0o644)  # package data every user can read (the writers made some owner-only)
            os.replace(staged / file, dest / file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and ship; a user mistake is one line on stderr and exit 1."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by acgan train")
    p.add_argument("--name", required=True, help=f"the packaged name: one of {', '.join(PRETRAINED)}")
    p.add_argument("--card", type=Path, required=True, help="the model card, markdown, with the measured numbers")
    p.add_argument("--dest_root", type=Path, default=PRETRAINED_ROOT,
                   help=f"where the NAME folder goes (default: the package's, {PRETRAINED_ROOT})")
    p.add_argument("--force", action="store_true", help="replace a different generator already shipped as NAME")
    args = p.parse_args(argv)
    try:
        dest = ship(args.checkpoint, args.name, args.card, args.dest_root, args.force)
    except UserError as e:
        print(f"ship_generator: error: {e}", file=sys.stderr)
        return 1
    sha256 = file_sha256(dest / WEIGHTS_FILE)
    print(f"shipped {dest}: {WEIGHTS_FILE} sha256 {sha256}, {(dest / WEIGHTS_FILE).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
