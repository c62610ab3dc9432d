"""Token shards: flat little-endian uint16/uint32 arrays on disk, read through memory maps.

A data directory holds `manifest.json`, `tokenizer.json` and one folder per split (`train/`, `val/`) of
`shard-NNNNN.bin` files. Documents are concatenated, each followed by the end-of-sequence token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX

MANIFEST_FORMAT = "lmforge-shards/1"
SHARD_TOKENS = 1 << 26  # 64M tokens (128 MiB as uint16) per shard file


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token ids to consecutive shard files of one split; memory use does not depend on corpus size."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []  # {"file": name, "tokens": n}
        self.tokens = 0
        self._fh = None
        self._in_shard = 0

    def _open_next(self) -> None:
        self.close()
        name = f"shard-{len(self.shards):05d}.bin"
        self._fh = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._in_shard = 0

    def write(self, ids) -> None:
        # fromiter converts a list of Python ints ~1.5x faster than asarray (the same values and range checks).
        if isinstance(ids, list):
            arr = np.fromiter(ids, dtype=self.dtype, count=len(ids))
        else:
            arr = np.asarray(ids, dtype=self.dtype)
        while arr.size:
            if self._fh is None or self._in_shard >= self.shard_tokens:
                self._open_next()
            take = min(arr.size, self.shard_tokens - self._in_shard)
            self._fh.write(arr[:take].astype("<" + self.dtype.str[1:], copy=False).tobytes())
            self._in_shard += take
            self.shards[-1]["tokens"] += take
            self.tokens += take
            arr = arr[take:]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a prepared data directory (no manifest.json); run `lmforge prepare` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is corrupted (not valid JSON); run `lmforge prepare` again") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def load_prepared(data_dir: str | os.PathLike) -> tuple[dict, Tokenizer]:
    """The manifest and tokenizer of a prepared data directory, checked against each other."""
    manifest = read_manifest(data_dir)
    tokenizer = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    if tokenizer.sha256() != manifest["tokenizer"]["sha256"]:
        raise TokenizerError(f"{data_dir}/tokenizer.json does not match its manifest; prepare the data again")
    return manifest, tokenizer


class TokenShards:
    """The tokens of one split of a data directory, as memory maps, with batch sampling and sequential windows."""

    def __init__(self, data_dir: str | os.PathLike, split: str = "train"):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise DataError(
                f"{data_dir} has no {split!r} split (it has: {', '.join(self.manifest['splits'])})"
            )
        info = self.manifest["splits"][split]
        self.split = split
        self.bytes = int(info["bytes"])
        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.arrays: list[np.memmap] = []
        for shard in info["shards"]:
            path = self.data_dir / split / shard["file"]
            expected = int(shard["tokens"]) * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise DataError(f"shard {path} is missing or truncated; run `lmforge prepare` again")
            if shard["tokens"]:
                self.arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self.lengths = np.array([a.size for a in self.arrays], dtype=np.int64)
        self.tokens = int(self.lengths.sum())

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    def check_block_size(self, block_size: int) -> None:
        longest = int(self.lengths.max()) if self.arrays else 0
        if longest < block_size + 1:
            raise DataError(
                f"the {self.split} split has {longest} tokens in its largest shard, fewer than block_size + 1 = "
                f"{block_size + 1}; use a smaller --model.block_size or more data"
            )

    def sample_batch(self, batch_size: int, block_size: int, generator):
        """Random windows (inputs, next-token targets) of `block_size` tokens as int64 tensors.

        `generator` is a torch.Generator: its state is the data position that a resumed run restores.
        """
        import torch

        usable = np.maximum(self.lengths - block_size, 0)
        # One uniform draw over all valid window starts of all shards: shards weigh by their size.
        starts = torch.randint(int(usable.sum()), (batch_size,), generator=generator).numpy()
        bounds = np.cumsum(usable)
        shard_of = np.searchsorted(bounds, starts, side="right")
        local = starts - (bounds[shard_of] - usable[shard_of])
        out = np.empty((batch_size, block_size + 1), dtype=np.int64)
        offsets = np.arange(block_size + 1)
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            out[rows] = self.arrays[s][local[rows, None] + offsets]
        t = torch.from_numpy(out)
        return t[:, :-1], t[:, 1:]

    def windows(self, block_size: int, batch_size: int, max_tokens: int | None = None) -> Iterator[tuple]:
        """Consecutive non-overlapping windows covering the split (or its first `max_tokens` targets)."""
        import torch

        budget = self.tokens if max_tokens is None else min(max_tokens, self.tokens)
        rows_x, rows_y = [], []
        for arr in self.arrays:
            pos = 0
            while pos + 1 < arr.size and budget > 0:
                n = min(block_size, arr.size - 1 - pos, budget)
                chunk = np.asarray(arr[pos : pos + n + 1], dtype=np.int64)
                rows_x.append(torch.from_numpy(chunk[:-1]))
                rows_y.append(torch.from_numpy(chunk[1:]))
                pos += n
                budget -= n
                if len(rows_x) == batch_size:
                    yield stack_rows(rows_x, rows_y)
                    rows_x, rows_y = [], []
        if rows_x:
            yield stack_rows(rows_x, rows_y)


def stack_rows(xs: list, ys: list) -> tuple:
    """Stack rows (1-d tensors) of possibly different lengths; short rows are padded with target IGNORE_INDEX."""
    import torch

    width = max(x.numel() for x in xs)
    x = torch.zeros(len(xs), width, dtype=torch.long)
    y = torch.full((len(xs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (a, b) in enumerate(zip(xs, ys)):
        x[i, : a.numel()] = a
        y[i, : b.numel()] = b
    return x, y
