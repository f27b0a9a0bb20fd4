"""A pickle reader that can rebuild CIFAR batches and nothing else, so a hostile file cannot run code."""

from __future__ import annotations

import _codecs
import io
import pickle
from typing import Any

import numpy as np

from acgan.errors import UserError

try:  # numpy >= 2 moved the implementation to numpy._core; numpy.core is a deprecated alias there.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for `_codecs.encode`: protocol-2 pickles written by Python 3 rebuild bytes through it."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"unexpected codec {encoding!r} in _codecs.encode")
    return _codecs.encode(text, "latin1", errors)


# Everything a CIFAR batch written by numpy 1 or 2 (or Python 2) references, at protocol 2 (the
# official files) or 5 (a re-saved copy: _frombuffer). Keys are what the pickle names, values what we
# hand back, so numpy 1 names resolve on numpy 2 without touching the deprecated numpy.core.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """Unpickler whose find_class admits only numpy array reconstruction and latin-1 bytes."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return an allow-listed global, refusing every other one before it can be called."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"refusing to load {self.source}: it references {module}.{name}, "
                "which a CIFAR batch never contains"
            ) from None


def load_cifar_pickle(data: bytes, source: str) -> Any:
    """Unpickle CIFAR batch bytes read from `source` (named in errors); garbled data raises UserError."""
    try:
        return CifarUnpickler(io.BytesIO(data), source).load()
    except UserError:
        raise
    # A truncated or garbled pickle can fail in many ways (EOFError, UnpicklingError, ValueError,
    # TypeError from numpy...); all of them mean the same thing to the user.
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__  # pickle's messages can span lines
        raise UserError(f"could not read {source}: it is truncated or not a CIFAR batch ({detail})") from None
