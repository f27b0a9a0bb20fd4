"""`acgan prepare`: decode a dataset once into a prepared directory, in parallel, resumable, with a progress bar.

The images go into images.u8.part, preallocated, one chunk at a time; progress.json records each finished chunk
(with the sizes and times of its files, so a file changed since is decoded again). A run that stops for any
reason resumes where it stopped. The manifest is written last: its presence means the directory is complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from acgan.data.dataset import hash_content
from acgan.data.prepared import FORMAT, FORMAT_VERSION, IMAGES_FILE, LABELS_FILE, MANIFEST_FILE
from acgan.errors import UserError

CHUNK_IMAGES = 1024  # images per unit of work and of progress: a few MB, so an interruption loses seconds
PART_FILE, PROGRESS_FILE = IMAGES_FILE + ".part", "progress.json"
OUR_FILES = frozenset({IMAGES_FILE, PART_FILE, LABELS_FILE, MANIFEST_FILE, PROGRESS_FILE, LABELS_FILE + ".tmp",
                       MANIFEST_FILE + ".tmp", PROGRESS_FILE + ".tmp", IMAGES_FILE + ".compact"})


@dataclass(frozen=True)
class Source:
    """What to prepare: files to decode (folder) or decoded images (CIFAR), their labels and class names."""

    description: dict[str, Any]  # dataset, root_dir, split, classes, class_names_file: recorded in the manifest
    image_size: int
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    paths: list[Path] | None = None  # folder: one file per image
    images: np.ndarray | None = None  # CIFAR: (N, 3, S, S) uint8, already decoded
    root: Path | None = None  # folder: where relative file names in the manifest start

    @property
    def num_images(self) -> int:
        """Number of images to prepare (before any bad one is left out)."""
        return len(self.labels)

    def fingerprint(self) -> str:
        """What makes two preparations the same one: settings, classes, and the list of files or source bytes."""
        digest = hashlib.sha256(json.dumps([FORMAT_VERSION, self.description, self.image_size,
                                            list(self.class_names)], sort_keys=True).encode())
        digest.update(self.labels.tobytes())
        if self.paths is not None:
            digest.update("\0".join(self.relative(p) for p in self.paths).encode("utf-8", "surrogateescape"))
        if self.images is not None:
            digest.update(memoryview(self.images).cast("B"))
        return digest.hexdigest()

    def relative(self, path: Path) -> str:
        """A file's name relative to the folder root, as the manifest lists skipped files."""
        return str(path.relative_to(self.root)) if self.root is not None else str(path)

    def chunk_key(self, chunk: int) -> str:
        """Sizes and modification times of a chunk's files: a finished chunk whose files changed is redone."""
        if self.paths is None:
            return ""
        digest = hashlib.sha256()
        for path in self.paths[chunk * CHUNK_IMAGES:(chunk + 1) * CHUNK_IMAGES]:
            try:
                st = path.stat()
                digest.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(b"missing;")
        return digest.hexdigest()


def prepare(source: Source, out_dir: Path, *, num_workers: int = 2, skip_bad: bool = False,
            show_progress: bool = True) -> dict[str, Any]:
    """Write source into out_dir as a prepared dataset (or finish an interrupted run); returns the manifest."""
    out_dir = Path(out_dir).expanduser()
    fingerprint = source.fingerprint()
    done_manifest = _check_out_dir(out_dir, fingerprint)
    if done_manifest is not None:
        return done_manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _load_progress(out_dir, fingerprint)
    per_image = 3 * source.image_size ** 2
    part = out_dir / PART_FILE
    if (out_dir / IMAGES_FILE).is_file() and not part.exists():  # stopped between the rename and the manifest
        os.replace(out_dir / IMAGES_FILE, part)
    if not progress.get("compacted"):  # else the part file already holds only the readable images
        with open(part, "ab") as f:  # creates it; sparse until written
            if f.tell() != source.num_images * per_image:
                f.truncate(source.num_images * per_image)
        num_chunks = -(-source.num_images // CHUNK_IMAGES)
        todo = [c for c in range(num_chunks) if progress["done"].get(str(c)) != source.chunk_key(c)]
        _run_chunks(source, part, todo, progress, out_dir, num_workers=num_workers, skip_bad=skip_bad,
                    show_progress=show_progress)
    return _finish(source, out_dir, progress, fingerprint)


def _check_out_dir(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The manifest when out_dir already holds this very preparation; refuse anything that is not ours to write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    if not out_dir.exists():
        return None
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{out_dir} holds a damaged {MANIFEST_FILE}: delete the directory or choose another "
                            "--out") from None
        if isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint:
            print(f"{out_dir} already holds this prepared dataset ({manifest['num_images']:,} images): nothing to do")
            return manifest
        raise UserError(f"{out_dir} holds another prepared dataset: delete it or choose another --out")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OUR_FILES)
    if foreign:
        raise UserError(f"--out {out_dir} is not empty (it holds {foreign[0]}{' and more' if len(foreign) > 1 else ''}"
                        "): choose a new or empty directory")
    return None


def _load_progress(out_dir: Path, fingerprint: str) -> dict[str, Any]:
    """The record of finished chunks of an interrupted run of the same preparation, or a fresh one."""
    path = out_dir / PROGRESS_FILE
    if not path.is_file():
        return {"fingerprint": fingerprint, "done": {}, "bad": {}}
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        progress = {}  # a damaged record: start over rather than trust it
    if progress.get("fingerprint") not in (fingerprint, None):
        raise UserError(f"{out_dir} holds an unfinished preparation of other data or settings: delete it or "
                        "choose another --out")
    if progress.get("fingerprint") == fingerprint:
        print(f"resuming: {len(progress['done'])} chunks of {CHUNK_IMAGES} images were already prepared")
        return progress
    return {"fingerprint": fingerprint, "done": {}, "bad": {}}


def _write_json(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _run_chunks(source: Source, part: Path, todo: list[int], progress: dict[str, Any], out_dir: Path, *,
                num_workers: int, skip_bad: bool, show_progress: bool) -> None:
    """Decode and write the chunks still to do, recording each one as it lands; stop at a bad image unless skip_bad."""
    from tqdm import tqdm

    remaining = sum(min(CHUNK_IMAGES, source.num_images - c * CHUNK_IMAGES) for c in todo)
    bar = tqdm(total=source.num_images, initial=source.num_images - remaining, unit="img", desc="prepare",
               dynamic_ncols=True, disable=not show_progress)
    with bar:
        for chunk, bad in _results(source, part, todo, num_workers):
            if bad and not skip_bad:
                index, message = bad[0]
                raise UserError(f"{message} (pass --skip_bad to leave unreadable images out; the images "
                                "prepared so far are kept for the next run)")
            first = chunk * CHUNK_IMAGES  # a redone chunk's old verdicts go: its files may have been fixed
            progress["bad"] = {k: m for k, m in progress["bad"].items() if not first <= int(k) < first + CHUNK_IMAGES}
            progress["done"][str(chunk)] = source.chunk_key(chunk)
            progress["bad"].update({str(i): m for i, m in bad})
            _write_json(out_dir / PROGRESS_FILE, progress)
            bar.update(min(CHUNK_IMAGES, source.num_images - chunk * CHUNK_IMAGES))
    if progress["bad"] and not skip_bad:  # left by an earlier run with --skip_bad
        first_bad = min(progress["bad"], key=int)
        raise UserError(f"{progress['bad'][first_bad]} (pass --skip_bad to leave unreadable images out)")


def _results(source: Source, part: Path, todo: list[int], num_workers: int) -> Iterator[tuple[int, list]]:
    """(chunk, [(index, message) of bad images]) for each chunk, as it is written; in a process pool for files."""
    if source.images is not None or num_workers < 2 or len(todo) < 2:
        for chunk in todo:
            yield chunk, write_chunk(part, chunk * CHUNK_IMAGES, source.image_size, _chunk_paths(source, chunk),
                                     _chunk_images(source, chunk))
        return
    # spawn: a forked child of a process that holds torch's threads can deadlock; starting fresh costs a second
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn"), initializer=_ignore_sigint) as pool:
        futures = {pool.submit(write_chunk, part, c * CHUNK_IMAGES, source.image_size, _chunk_paths(source, c), None): c
                   for c in todo}
        try:
            for future in futures:  # in file order: the first bad image reported is the first in the listing
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the main process, which stops them and keeps the progress made."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _chunk_paths(source: Source, chunk: int) -> list[Path] | None:
    """The files of one chunk (a worker is sent its own few, not the whole list); None for decoded sources."""
    if source.paths is None:
        return None
    return source.paths[chunk * CHUNK_IMAGES:(chunk + 1) * CHUNK_IMAGES]


def _chunk_images(source: Source, chunk: int) -> np.ndarray | None:
    """The decoded images of one chunk; None for files still to decode."""
    if source.images is None:
        return None
    return source.images[chunk * CHUNK_IMAGES:(chunk + 1) * CHUNK_IMAGES]


def write_chunk(part: Path, start: int, image_size: int, paths: list[Path] | None,
                images: np.ndarray | None) -> list[tuple[int, str]]:
    """Decode files (or take decoded images) and write them from image index start on; returns the bad ones."""
    from acgan.data.folder import load_image

    bad: list[tuple[int, str]] = []
    if images is not None:
        block = np.ascontiguousarray(images)  # (n, 3, S, S) uint8
    else:
        block = np.zeros((len(paths or ()), 3, image_size, image_size), dtype=np.uint8)
        for j, path in enumerate(paths or ()):
            try:
                block[j] = load_image(path, image_size).transpose(2, 0, 1)  # HWC -> CHW
            except UserError as exc:
                bad.append((start + j, str(exc)))
    fd = os.open(part, os.O_WRONLY)
    try:
        os.pwrite(fd, memoryview(block).cast("B"), start * 3 * image_size ** 2)
        os.fdatasync(fd)  # on disk before progress.json says so
    finally:
        os.close(fd)
    return bad


def _finish(source: Source, out_dir: Path, progress: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """Leave out bad images, write labels, hash the images, rename the part file, and write the manifest last."""
    bad = sorted(int(i) for i in progress["bad"])
    keep = np.setdiff1d(np.arange(source.num_images), np.asarray(bad, dtype=np.int64))
    if len(keep) == 0:
        raise UserError("no image could be read: nothing to prepare")
    part, images = out_dir / PART_FILE, out_dir / IMAGES_FILE
    if bad and not progress.get("compacted"):
        _compact(part, keep, 3 * source.image_size ** 2)
        progress["compacted"] = True
        _write_json(out_dir / PROGRESS_FILE, progress)
    labels = np.ascontiguousarray(source.labels[keep])
    shape = (len(keep), 3, source.image_size, source.image_size)
    tmp = out_dir / (LABELS_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, labels, allow_pickle=False)
    os.replace(tmp, out_dir / LABELS_FILE)
    content_hash = hash_content(shape, _read_blocks(part), labels, source.class_names)
    os.replace(part, images)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "num_images": len(keep), "image_size": source.image_size,
        "class_names": list(source.class_names), "content_hash": content_hash, "fingerprint": fingerprint,
        "source": source.description,
        "skipped": [{"file": source.relative(source.paths[i]) if source.paths else str(i),
                     "error": progress["bad"][str(i)]} for i in bad],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / MANIFEST_FILE, manifest)
    (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    return manifest


def _compact(part: Path, keep: np.ndarray, per_image: int) -> None:
    """Rewrite part with only the kept rows (through a second file: an interrupted compaction is simply redone)."""
    compact = part.with_name(IMAGES_FILE + ".compact")
    with open(part, "rb") as src, open(compact, "wb") as dst:
        for start in range(0, len(keep), CHUNK_IMAGES):
            for i in keep[start:start + CHUNK_IMAGES]:
                src.seek(int(i) * per_image)
                dst.write(src.read(per_image))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(compact, part)


def _read_blocks(path: Path, block_bytes: int = 64 << 20) -> Iterator[bytes]:
    """A file's bytes in blocks, for hashing gigabytes without holding them."""
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            yield block


def folder_source(root_dir: str | Path | None, image_size: int, *, classes: str | None = None,
                  class_names_file: str | Path | None = None) -> Source:
    """A class-folder tree (ImageNet's train/<wnid>/*.JPEG too) as files to decode."""
    from acgan.data.folder import list_folder

    listing = list_folder(root_dir, classes=classes, class_names_file=class_names_file)
    description = {"dataset": "folder", "root_dir": str(listing.root.resolve()), "split": "train", "classes": classes,
                   "class_names_file": str(class_names_file) if class_names_file else None,
                   "class_keys": list(listing.class_keys)}
    return Source(description, image_size, listing.labels, listing.class_names, paths=listing.paths,
                  root=listing.root)


def decoded_source(name: str, root_dir: str | Path | None, image_size: int, *, split: str = "train",
                   classes: str | None = None, download: bool = False) -> Source:
    """A dataset acgan loads whole (CIFAR-10/100, shapes) as decoded images."""
    from acgan.data.load import load_dataset

    dataset = load_dataset(name, root_dir, split=split, image_size=image_size, download=download, classes=classes)
    root = str(Path(root_dir).expanduser().resolve()) if root_dir is not None else None
    description = {"dataset": name, "root_dir": root, "split": split, "classes": classes, "class_names_file": None}
    return Source(description, image_size, dataset.labels.numpy(), dataset.class_names,
                  images=dataset.images.numpy())


def prepare_command(args: Any) -> int:
    """`acgan prepare`: build the source, prepare it into --out, say what was written and how to train on it."""
    import time

    from acgan.storage import human_bytes

    if args.num_workers < 0 or args.image_size < 8:
        raise UserError("--num_workers must be >= 0 and --image_size at least 8")
    if args.dataset == "folder":
        if args.split != "train":
            raise UserError("the folder dataset has no test split: it uses every image in the folder")
        source = folder_source(args.root_dir, args.image_size, classes=args.classes,
                               class_names_file=args.class_names_file)
    else:
        if args.class_names_file is not None:
            raise UserError("--class_names applies to --dataset folder")
        source = decoded_source(args.dataset, args.root_dir, args.image_size, split=args.split, classes=args.classes,
                                download=args.download)
    start = time.perf_counter()
    manifest = prepare(source, args.out, num_workers=args.num_workers, skip_bad=args.skip_bad)
    seconds = time.perf_counter() - start
    n, s = manifest["num_images"], manifest["image_size"]
    print(f"{args.out}: {n:,} images of {s}x{s} in {len(manifest['class_names'])} classes, "
          f"{human_bytes(n * 3 * s * s)}; {seconds:.1f} s ({source.num_images / seconds:,.0f} images/s)")
    if manifest["skipped"]:
        print(f"left out {len(manifest['skipped'])} unreadable images, listed in {Path(args.out) / MANIFEST_FILE}")
    print(f"train on it: acgan train --dataset prepared --root_dir {args.out}")
    return 0
