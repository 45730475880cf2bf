"""`python -m serving --model-dir DIR`: the container's entry point (see serving/README.md)."""
from __future__ import annotations

import os

# One request at a time runs on the event loop: a BLAS thread pool per call only adds
# hand-off overhead (measured: ~25% slower single-user calls). Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys

from components.errors import RecsysError
from serving.server import build_parser, serve


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except RecsysError as exc:
        print(f"serving: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
