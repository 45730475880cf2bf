"""Command line of tools/e2e-kind.sh."""

from __future__ import annotations

import argparse
import re

DESCRIPTION = """\
End-to-end test on a throwaway kind cluster: create it, install the platform as terraform/ does
(cert-manager, Istio, Knative Serving, KServe, Kubeflow Pipelines; versions read from
terraform/variables.tf), build and load both images, apply manifests/overlays/dev, train on
Kubeflow with `recsys submit`, call the InferenceService over v2 REST and gRPC, train a second
model that becomes the canary, check the traffic split, roll back with the documented
`kubectl patch` and check the champion serves everything, delete the cluster.
Needs Docker, kind, kubectl and helm on PATH and the project's virtualenv (`make install`)."""


def _name(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", text):
        raise argparse.ArgumentTypeError(f"{text!r}: 3-32 lowercase letters, digits or dashes")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1024 <= port < 65536:
        raise argparse.ArgumentTypeError(f"{port}: use a port from 1024 to 65535")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be greater than 0")
    return value


def _requests(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 50:
        raise argparse.ArgumentTypeError(f"{value}: at least 50 requests to judge a split")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/e2e-kind.sh",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cluster-name",
        type=_name,
        default="recsys-e2e",
        help="kind cluster to create (must not exist) (default: %(default)s)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the cluster running at the end, passed or failed, for inspection "
        "(delete it with `kind delete cluster --name NAME`)",
    )
    p.add_argument(
        "--ingress-port",
        type=_port,
        default=31080,
        help="host port mapped to the Istio ingress gateway (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        choices=range(6),
        default=1,
        metavar="N",
        help="kind worker nodes besides the control plane, 0-5 (default: %(default)s)",
    )
    p.add_argument(
        "--tag", default="e2e", help="tag of the images built and loaded (default: %(default)s)"
    )
    p.add_argument(
        "--skip-build",
        action="store_true",
        help="use images already built with the tag instead of building them",
    )
    p.add_argument(
        "--run-timeout",
        type=_positive,
        default=3600.0,
        metavar="SECONDS",
        help="longest wait for one pipeline run (default: %(default)s)",
    )
    p.add_argument(
        "--ready-timeout",
        type=_positive,
        default=900.0,
        metavar="SECONDS",
        help="longest wait for a component or revision to be ready (default: %(default)s)",
    )
    p.add_argument(
        "--requests",
        type=_requests,
        default=400,
        metavar="N",
        help="requests sent to judge the canary split and the rollback (default: %(default)s)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
