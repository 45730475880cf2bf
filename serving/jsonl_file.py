"""A JSON-lines file rotated by size that knows, to the line, what reached the disk.

Written here rather than taken from the standard library's `RotatingFileHandler`, because that
one writes through a buffered text stream: on a full disk it cannot tell which records reached
the disk (so what was lost cannot be counted), a failed flush leaves the data in its buffer to be
written again later, and it rotates only between whole records, so one large record overshoots
the size limit by its whole size. Here the lines of one call go out in one unbuffered write,
the size limit is checked line by line, and a write that stops part-way is known to the byte:
the complete lines count as written, the rest do not, and the torn fragment is ended with a
newline before the next write, so the next line starts on a line of its own.
"""
from __future__ import annotations

import os
from pathlib import Path


class RotatingJsonLines:
    """Append lines to a file rotated by size, knowing to the line what reached the disk."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._fd: int | None = None
        self._size = 0
        self._torn = False  # the file ends in a fragment of a line (a write stopped part-way)
        self._partial_lines = 0

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # nothing is buffered: there is nothing left to lose
                pass

    def _rotate(self) -> None:
        self.close()
        if self.backup_count > 0:
            for i in range(self.backup_count - 1, 0, -1):
                older = Path(f"{self.path}.{i}")
                if older.exists():
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self._open()

    def _write_out(self, data: bytes) -> None:
        """One write (a loop only if the kernel takes part of it); on an error, remembers how
        many whole lines got out and whether a fragment did."""
        done = 0
        self._partial_lines = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        finally:
            self._size += done
            if done < len(data):
                self._partial_lines = data.count(b"\n", 0, done)
                if done and data[done - 1 : done] != b"\n":
                    self._torn = True

    def write(self, lines: list[bytes]) -> tuple[int, OSError | None]:
        """Append `lines` (each ending in a newline); returns how many were written, and the
        error that stopped the rest (the file is then closed, to be opened again next time)."""
        written, batch, size = 0, [], 0
        try:
            self._open()
            if self._torn:  # end the fragment, so that the next line starts on a line of its own
                self._write_out(b"\n")
                self._torn = False
            size = self._size
            for line in lines:
                if self.max_bytes and size and size + len(line) > self.max_bytes:
                    if batch:
                        self._write_out(b"".join(batch))
                        written, batch = written + len(batch), []
                    self._rotate()
                    size = 0
                batch.append(line)
                size += len(line)
            if batch:
                self._write_out(b"".join(batch))
                written += len(batch)
        except OSError as exc:
            self.close()
            return written + self._partial_lines, exc
        return written, None
