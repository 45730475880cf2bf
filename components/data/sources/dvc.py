"""DVC-versioned data: `dvc://REPO//PATH@REV`, read through DVC's Python API.

REPO is a git URL or a local path, PATH a file or directory tracked by DVC (or by git) inside
it, REV any git revision (tag, branch, commit; the default is the repository's HEAD, or for a
local path its working tree). `//` ends REPO, as in Terraform's module sources; it may be left
out after `.git` (`https://host/team/data.git/ratings.parquet@v3`) or when REPO is a local
directory holding `.git`. A run that names a tag or commit names an exact data version.

The fingerprint is DVC's content hash of PATH (the md5 recorded in the `.dvc` or `dvc.lock`
file, `.dir` for a directory), read from git without downloading the data; a git-tracked file
is hashed from its bytes. The same data at another revision has the same fingerprint.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from components.data.sources import concat_parts, is_table_file, read_table_bytes, redact, stem
from components.errors import DataSourceError

_REPO_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class DvcSource:
    repo: str
    path: str
    rev: str | None = None

    @classmethod
    def from_url(cls, text: str) -> DvcSource:
        rest = text[len("dvc://"):]
        start = len(m.group(0)) if (m := _REPO_SCHEME.match(rest)) else 0
        if "//" in rest[start:]:
            at = rest.index("//", start)
            repo, path = rest[:at], rest[at + 2:]
        elif ".git/" in rest[start:]:
            at = rest.index(".git/", start) + len(".git")
            repo, path = rest[:at], rest[at + 1:]
        else:
            repo, path = _split_local(rest, text)
        rev = None
        if "@" in path:
            path, rev = path.rsplit("@", 1)
        if not repo or not path.strip("/"):
            raise DataSourceError(f"{redact(text)}: write dvc://REPO//PATH@REV")
        return cls(repo, path.strip("/"), rev or None)

    @property
    def url(self) -> str:
        return redact(f"dvc://{self.repo}//{self.path}" + (f"@{self.rev}" if self.rev else ""))

    @property
    def name(self) -> str:
        return stem(self.path)

    @cached_property
    def _fs(self):
        from dvc.api import DVCFileSystem

        with self._errors():
            return DVCFileSystem(self.repo, rev=self.rev)

    def _info(self) -> dict:
        with self._errors():
            try:
                return self._fs.info(self.path)
            except FileNotFoundError:
                at = f" at {self.rev}" if self.rev else ""
                raise DataSourceError(
                    f"{self.url}: no such file or directory in the repository{at}"
                ) from None

    def fingerprint(self) -> str:
        info = self._info()
        content_hash = info.get("md5") or (info.get("dvc_info") or {}).get("md5")
        if content_hash:
            return f"dvc:md5:{content_hash}"
        # Tracked by git, not DVC: git holds the bytes, so hashing them downloads nothing more.
        digest = hashlib.sha256()
        for part in self._parts(info):
            digest.update(part.encode() + b"\0")
            with self._errors():
                digest.update(self._fs.read_bytes(part))
        return "dvc:git:" + digest.hexdigest()

    def read(self) -> pd.DataFrame:
        info = self._info()
        try:
            blobs = [(part, self._fs.read_bytes(part)) for part in self._parts(info)]
        except DataSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - DVC and its filesystems raise many kinds
            raise DataSourceError(
                f"{self.url}: tracked, but its data cannot be fetched from the DVC remote (was "
                f"it pushed? are the remote's credentials set?): {_first_line(exc)}"
            ) from None
        frames = [read_table_bytes(data, part, f"{self.url} ({part})") for part, data in blobs]
        return concat_parts(frames, self.url)

    def _parts(self, info: dict) -> list[str]:
        if info.get("type") != "directory":
            return [self.path]
        with self._errors():
            parts = sorted(p for p in self._fs.find(self.path) if is_table_file(p))
        if not parts:
            raise DataSourceError(f"{self.url}: no Parquet or CSV files in the directory")
        return parts

    def _errors(self) -> _DvcErrors:
        return _DvcErrors(self)


class _DvcErrors:
    def __init__(self, source: DvcSource):
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, (DataSourceError, FileNotFoundError)):
            return False
        from dvc.exceptions import DvcException
        from dvc.scm import CloneError, RevError

        where = self.source.url
        if isinstance(exc, RevError):
            raise DataSourceError(f"{where}: {_first_line(exc)} in {redact(self.source.repo)}") from None
        if isinstance(exc, CloneError):
            raise DataSourceError(
                f"{where}: cannot clone the git repository {redact(self.source.repo)} (no "
                "repository there, the host is unreachable, or access is denied)"
            ) from None
        if isinstance(exc, DvcException):
            raise DataSourceError(f"{where}: {_first_line(exc)}") from None
        return False


def _split_local(rest: str, text: str) -> tuple[str, str]:
    """The nearest directory above PATH that holds a git repository."""
    candidate = Path(rest.rsplit("@", 1)[0])
    for parent in candidate.parents:
        if (parent / ".git").exists():
            return str(parent), rest[len(str(parent)):]
    raise DataSourceError(
        f"{redact(text)}: cannot tell the repository from the path; write dvc://REPO//PATH@REV"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__
