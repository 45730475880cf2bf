"""Which data set a model was trained on, so that the gate only compares like with like.

A data set's identity is two things, recorded as tags on each registered model version:

- `data_source`: where the interactions came from, as `recsys run --data` named it: a built-in
  data set's name, a local file's or directory's absolute path, a remote source's URL (without
  credentials). New rows of the same source keep it; feedback added to a retraining does too.
- `data_catalogue`: the items the model knows (its artifact's `items.parquet`), as their count
  and a bottom-k sketch: the `SKETCH_SIZE` smallest 48-bit BLAKE2 hashes of the item ids. Two
  sketches estimate the Jaccard overlap of their catalogues (exactly when both are smaller than
  the sketch) without storing the catalogues, so a tag of a few kilobytes answers "mostly the
  same items?" for catalogues of any size.

Two versions are of the same data set when their sources are equal and their catalogues have at
least `MIN_OVERLAP` in common (a catalogue that grows with new items stays the same; the same
path holding another data set does not). A version registered before these tags existed has no
recorded identity: it is taken to be of the same data set as any other (the gate compares with
it as it always did, and says so), since nothing recorded tells otherwise.

Written here rather than taken from a library: a bottom-k sketch is twenty lines, and the MinHash
libraries (datasketch) would be a new dependency for it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE_TAG = "data_source"
CATALOGUE_TAG = "data_catalogue"
SKETCH_SIZE = 256
MIN_OVERLAP = 0.5
_HEX = 12  # 48-bit hashes: no collision to speak of below hundreds of millions of items


@dataclass(frozen=True)
class DataIdentity:
    source: str
    items: int  # catalogue size
    sketch: tuple[int, ...]  # the smallest item hashes, ascending

    def tags(self) -> dict[str, str]:
        hashes = ",".join(f"{h:0{_HEX}x}" for h in self.sketch)
        return {SOURCE_TAG: self.source, CATALOGUE_TAG: f"{self.items}:{hashes}"}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str] | None) -> DataIdentity | None:
        """The identity recorded on a model version; None when it has none (or a broken one)."""
        tags = tags or {}
        source, catalogue = tags.get(SOURCE_TAG), tags.get(CATALOGUE_TAG)
        if not source or not catalogue:
            return None
        try:
            count, _, hashes = catalogue.partition(":")
            sketch = tuple(sorted(int(h, 16) for h in hashes.split(",") if h))
            return cls(source, int(count), sketch)
        except ValueError:
            return None

    def overlap(self, other: DataIdentity) -> float:
        """Estimated Jaccard overlap of the two catalogues (exact below `SKETCH_SIZE` items)."""
        mine, theirs = set(self.sketch), set(other.sketch)
        if not mine and not theirs:
            return 1.0
        smallest = sorted(mine | theirs)[:SKETCH_SIZE]
        return sum(1 for h in smallest if h in mine and h in theirs) / len(smallest)

    def same_data_set(self, other: DataIdentity) -> bool:
        return self.source == other.source and self.overlap(other) >= MIN_OVERLAP

    def describe(self) -> str:
        return f"{self.source}, {self.items:,} items"


def source_identity(source: str) -> str:
    """The source as the pipeline reads it: a remote URL without credentials, a local path made
    absolute, a built-in data set's name as given."""
    from components.data.sources import is_remote, open_source

    if is_remote(source):
        return open_source(source).url
    if Path(source).exists():
        return str(Path(source).resolve())
    return source


def catalogue_sketch(item_ids: Iterable[object]) -> tuple[int, ...]:
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest()[:6], "big")
         for i in set(map(str, item_ids))), dtype=np.uint64)
    if len(hashes) > SKETCH_SIZE:
        hashes = np.partition(hashes, SKETCH_SIZE - 1)[:SKETCH_SIZE]
    return tuple(int(h) for h in np.sort(hashes))


def identity_of(source: str, item_ids: Iterable[object]) -> DataIdentity:
    ids = set(map(str, item_ids))
    return DataIdentity(source_identity(source), len(ids), catalogue_sketch(ids))


def model_identity(source: str, model_dir: str | Path) -> DataIdentity:
    """The identity of a model artifact trained on `source`: its catalogue is its items file."""
    import pandas as pd

    items = pd.read_parquet(Path(model_dir) / "items.parquet", columns=["item_id"])
    return identity_of(source, items["item_id"].astype(str))


def difference(new: DataIdentity, old: DataIdentity) -> str:
    """How `old` differs from `new`: "another source" or "another catalogue (N% of the items in
    common)"; for two identities that are not `same_data_set`."""
    return ("another source" if new.source != old.source
            else f"another catalogue ({new.overlap(old):.0%} of the items in common)")


def other_data_set(new: DataIdentity, old: DataIdentity, old_version: str) -> str:
    """The gate's one line when it refuses to compare across data sets."""
    what = difference(new, old)
    return (f"trained on {what} than the champion (version {old_version}: {old.describe()}; "
            f"this one: {new.describe()}), so the gate does not compare them: registered without "
            "an alias (use `recsys run --model-name NAME` to register it under a name of its "
            "own, or set an alias by hand)")
