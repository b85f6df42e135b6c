"""Image datasets for teacher training: a folder or a zip in the layout NVIDIA's
``dataset_tool.py`` writes (images in any sub-folders, optional ``dataset.json`` with
``{"labels": [[relative_path, class_index], ...]}``).

Images are returned as uint8 CHW arrays. ``mirror`` doubles the dataset with x-flipped copies
(index ``i + n`` is the flip of ``i``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.cli import ToonError
from common.images import IMAGE_EXTENSIONS


class DatasetError(ToonError):
    """The dataset is missing, unreadable or does not fit the network (one-line message)."""


class ImageDataset(torch.utils.data.Dataset):
    """Square power-of-two images from a folder or zip, with optional labels and x-flips."""

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int | None = None,
        channels: int = 3,
        mirror: bool = False,
        use_labels: bool = False,
        max_size: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"{self.path}: dataset not found")
        self.is_zip = self.path.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise DatasetError(f"{self.path}: not a folder or a zip file")
        self._zip: zipfile.ZipFile | None = None
        names = sorted(n for n in self._all_names() if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
        if max_size is not None:
            names = names[:max_size]
        if not names:
            raise DatasetError(
                f"{self.path}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        self.names = names
        self.channels = channels
        self.mirror = mirror
        first = self._load_raw(0)
        h, w = first.shape[1:]
        if h != w or h < 4 or h & (h - 1):
            raise DatasetError(
                f"{self.path}: images must be square with a power-of-two size, "
                f"{names[0]} is {w}x{h}"
            )
        if resolution is not None and h != resolution:
            raise DatasetError(
                f"{self.path}: images are {h}x{h} but the network is "
                f"{resolution}x{resolution}; realign the data with --size {resolution}"
            )
        self.resolution = h
        self.labels = self._load_labels() if use_labels else None

    # -- file access -------------------------------------------------------------------------

    def _all_names(self) -> list[str]:
        if self.is_zip:
            return [n for n in self._zipfile().namelist() if not n.endswith("/")]
        return [
            str(p.relative_to(self.path)).replace(os.sep, "/")
            for p in self.path.rglob("*")
            if p.is_file()
        ]

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def _read_bytes(self, name: str) -> bytes:
        if self.is_zip:
            return self._zipfile().read(name)
        return (self.path / name).read_bytes()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not cross process boundaries
        return state

    def _load_raw(self, idx: int) -> np.ndarray:
        name = self.names[idx]
        try:
            with Image.open(io.BytesIO(self._read_bytes(name))) as im:
                im = im.convert("RGB" if self.channels == 3 else "L")
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DatasetError(f"{self.path}/{name}: unreadable image ({e})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr.transpose(2, 0, 1)
        if hasattr(self, "resolution") and arr.shape[1:] != (self.resolution, self.resolution):
            raise DatasetError(
                f"{self.path}/{name}: size {arr.shape[2]}x{arr.shape[1]} differs "
                f"from the dataset's {self.resolution}x{self.resolution}"
            )
        return arr

    def _load_labels(self) -> np.ndarray:
        try:
            raw = json.loads(self._read_bytes("dataset.json"))
        except (KeyError, FileNotFoundError):
            raise DatasetError(f"{self.path}: --cond needs labels in dataset.json") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.path}/dataset.json: invalid JSON ({e})") from None
        table = dict(raw.get("labels") or [])
        missing = [n for n in self.names if n not in table]
        if missing:
            raise DatasetError(f"{self.path}/dataset.json: no label for {missing[0]}")
        labels = np.array([table[n] for n in self.names])
        if labels.ndim == 1:  # class indices -> one-hot
            num = int(labels.max()) + 1
            onehot = np.zeros([len(labels), num], dtype=np.float32)
            onehot[np.arange(len(labels)), labels.astype(np.int64)] = 1
            return onehot
        return labels.astype(np.float32)

    # -- dataset protocol --------------------------------------------------------------------

    @property
    def label_dim(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[1])

    def __len__(self) -> int:
        return len(self.names) * (2 if self.mirror else 1)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.names)
        flip = idx >= n
        raw = self._load_raw(idx % n)
        if flip:
            raw = raw[:, :, ::-1]
        label = self.labels[idx % n] if self.labels is not None else np.zeros([0], dtype=np.float32)
        return np.ascontiguousarray(raw), label

    def check_all(self) -> None:
        """Read every image once so a bad file is reported before training starts."""
        for i in range(len(self.names)):
            self._load_raw(i)


def index_stream(num_items: int, seed: int, start: int, count: int) -> np.ndarray:
    """Sample indices ``start .. start+count-1`` of an endless shuffled stream.

    The stream is epoch after epoch of ``RandomState(seed + epoch).permutation(num_items)``, so
    position ``k`` depends only on (seed, k): a resumed run continues the same sequence.
    """
    out = np.empty([count], dtype=np.int64)
    pos = start
    filled = 0
    while filled < count:
        epoch, offset = divmod(pos, num_items)
        perm = np.random.RandomState((seed + epoch) % 2**32).permutation(num_items)
        take = min(count - filled, num_items - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
        pos += take
    return out
