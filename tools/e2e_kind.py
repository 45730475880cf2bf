"""Driver of tools/e2e-kind.sh: the end-to-end test on a throwaway kind cluster.

Run it through tools/e2e-kind.sh (--help says what it does). The parts that need no cluster
live in tools/e2e/ and are tested without one; this file only strings them together against
Docker, kind, kubectl, helm, Kubeflow Pipelines and the InferenceService.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import checks, platform, v2
from e2e.options import parse_args
from e2e.runner import E2EError, Fatal, StageFailed, Stages, failure_report, run, wait_until

REPO = Path(__file__).resolve().parents[1]
# The rollback command of README.md, character for character (a test keeps the two alike).
ROLLBACK_PATCH = '{"spec":{"predictor":{"canaryTrafficPercent":0}}}'
ROLLBACK = (
    "kubectl",
    "patch",
    "isvc",
    "recsys",
    "-n",
    "recsys",
    "--type",
    "merge",
    "-p",
    ROLLBACK_PATCH,
)
MLFLOW = "http://recsys-mlflow.recsys:5000"
CANARY_PERCENT = 10
# Small synthetic data: minutes per run on a laptop cluster, no download.
DATA_PARAMS = (
    "source=synthetic",
    "synthetic_users=300",
    "synthetic_items=200",
    "synthetic_interactions=8000",
)
# The champion is a deliberately weaker model (no ranker); the second run's full model passes
# a gate that asks for no gain, so it becomes the canary. On this data the local pipeline
# (`recsys run --data synthetic ...` with these two configs) scored NDCG@10 0.3242 and 0.3696:
# the second was accepted at +14.0%.
CHAMPION_CONFIG = "model:\n  ranker:\n    enabled: false\n"
CANARY_CONFIG = "gate:\n  min_relative_gain: 0.0\n  guardrails: {}\n"


def kubectl_text(args: list[str]) -> str:
    return run(["kubectl", *args], timeout=120).stdout


def kubectl_json(args: list[str]) -> dict:
    return json.loads(kubectl_text([*args, "-o", "json"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def port_forward(target: str, namespace: str, remote: int, timeout: float) -> Iterator[int]:
    """`kubectl port-forward` on a free local port, ended on exit; yields the port."""
    local = free_port()
    proc = subprocess.Popen(
        ["kubectl", "port-forward", "-n", namespace, target, f"{local}:{remote}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def listening() -> bool | None:
        if proc.poll() is not None:
            raise Fatal(f"port-forward to {namespace}/{target} exited: {proc.stderr.read()[-300:]}")
        with socket.socket() as s:
            return True if s.connect_ex(("127.0.0.1", local)) == 0 else None

    try:
        wait_until(f"port-forward to {namespace}/{target}", listening, timeout=timeout, interval=1)
        yield local
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def install_platform(versions: dict[str, str], workdir: Path) -> None:
    for step in platform.install_steps(versions):
        argv = list(step.argv)
        if step.values:
            values = workdir / f"{step.name}-values.yaml"
            values.write_text(step.values)
            argv += ["-f", str(values)]
        run(argv, timeout=1200)
        if step.wait:
            run(["kubectl", "wait", *step.wait], timeout=1200)
    rendered = run(platform.prometheus_crds_command(versions), timeout=300).stdout
    run(["kubectl", "apply", "--server-side", "-f", "-"], input=platform.crds_only(rendered))


def apply_manifests(serving: str, pipeline: str, timeout: float) -> None:
    rendered = kubectl_text(["kustomize", str(REPO / "manifests" / "overlays" / "dev")])
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    objects = checks.set_images(
        objects, {checks.MANIFEST_IMAGES[0]: serving, checks.MANIFEST_IMAGES[1]: pipeline}
    )
    checks.check_rendered(objects, serving)
    manifest = yaml.safe_dump_all(objects, sort_keys=False)
    # KServe's and Istio's admission webhooks may still be starting: apply until they answer.
    wait_until(
        "the dev overlay to apply",
        lambda: run(["kubectl", "apply", "-f", "-"], input=manifest),
        timeout=300,
        interval=10,
    )
    run(["kubectl", "apply", "-k", str(REPO / "manifests" / "kubeflow")])
    run(
        [
            "kubectl",
            "wait",
            "deployment",
            "--all",
            "-n",
            "recsys",
            "--for=condition=Available",
            f"--timeout={timeout:.0f}s",
        ],
        timeout=timeout + 60,
    )
    run(
        [
            "kubectl",
            "wait",
            "job",
            "--all",
            "-n",
            "recsys",
            "--for=condition=Complete",
            f"--timeout={timeout:.0f}s",
        ],
        timeout=timeout + 60,
    )


def recsys() -> str:
    """The `recsys` command of the virtualenv this driver runs in."""
    return str(Path(sys.executable).parent / "recsys")


def run_state(run_id: str, timeout: float) -> bool | None:
    """One look at a KFP run, through a port-forward of its own: a forward held open for the
    whole run (up to an hour) may drop, one per look cannot go stale."""
    import kfp

    try:
        with port_forward("svc/ml-pipeline-ui", "kubeflow", 80, timeout) as port:
            state = kfp.Client(host=f"http://127.0.0.1:{port}").get_run(run_id).state
    except Exception as exc:  # a dropped forward, urllib3 and kfp_server_api errors: look again
        raise E2EError(f"cannot read run {run_id}: {type(exc).__name__}: {exc}") from exc
    return checks.check_run_state(state, run_id) or None


def train(package: Path, name: str, config_yaml: str, args) -> None:
    """One training run through `recsys submit`, waited for until it succeeds."""
    with port_forward("svc/ml-pipeline-ui", "kubeflow", 80, args.ready_timeout) as port:
        argv = [
            recsys(),
            "submit",
            "--host",
            f"http://127.0.0.1:{port}",
            "--package",
            str(package),
            "--run-name",
            name,
            "--param",
            f"mlflow_tracking_uri={MLFLOW}",
            "--param",
            f"config_yaml={config_yaml}",
        ]
        for param in DATA_PARAMS:
            argv += ["--param", param]
        run_id = checks.submitted_run_id(run(argv, timeout=300).stdout)
    print(f"  {name}: run {run_id}", flush=True)
    wait_until(
        f"pipeline run {run_id} ({name})",
        lambda: run_state(run_id, args.ready_timeout),
        timeout=args.run_timeout,
        interval=30,
    )


def isvc() -> dict:
    return kubectl_json(["get", "isvc", "recsys", "-n", "recsys"])


def ready(obj: dict) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def predictor_version(timeout: float) -> str:
    """v2 over REST and gRPC (tritonclient) on a predictor pod, through port-forwards."""
    pods = kubectl_json(
        [
            "get",
            "pods",
            "-n",
            "recsys",
            "-l",
            "serving.kserve.io/inferenceservice=recsys",
            "--field-selector=status.phase=Running",
        ]
    )["items"]
    if not pods:
        raise E2EError("no running predictor pod")
    pod = f"pod/{pods[0]['metadata']['name']}"
    with (
        port_forward(pod, "recsys", 8080, timeout) as rest,
        port_forward(pod, "recsys", 8081, timeout) as grpc,
    ):
        return v2.rest_and_grpc_version(f"127.0.0.1:{rest}", f"127.0.0.1:{grpc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    serving = f"kind.local/recsys:{args.tag}"
    gateway = f"http://127.0.0.1:{args.ingress_port}"
    pipeline = f"kind.local/recsys-pipeline:{args.tag}"
    created = False

    def report(stage: str, reason: str) -> str:
        return (
            failure_report(stage, reason, kubectl_text)
            if created
            else f"=== end-to-end test failed in stage {stage!r}: {reason} (no cluster yet)"
        )

    stages = Stages(report=report)
    started = time.monotonic()
    state: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-e2e-") as tmp:
            workdir = Path(tmp)
            with stages.stage("preflight"):
                for tool in (
                    ["docker", "info"],
                    ["kind", "version"],
                    ["kubectl", "version", "--client"],
                    ["helm", "version"],
                ):
                    run(tool, timeout=60)
                versions = platform.platform_versions()
                node_image = platform.kind_node_image()
                if args.cluster_name in run(["kind", "get", "clusters"]).stdout.split():
                    raise E2EError(
                        f"kind cluster {args.cluster_name} exists already: "
                        f"`kind delete cluster --name {args.cluster_name}` first"
                    )
            with stages.stage("cluster"):
                config = workdir / "kind.yaml"
                config.write_text(platform.kind_config(args.workers, args.ingress_port))
                created = True
                run(
                    [
                        "kind",
                        "create",
                        "cluster",
                        "--name",
                        args.cluster_name,
                        "--image",
                        node_image,
                        "--config",
                        str(config),
                        "--wait",
                        "5m",
                    ],
                    timeout=900,
                )
            with stages.stage("platform"):
                install_platform(versions, workdir)
            with stages.stage("images"):
                if not args.skip_build:
                    run(["docker", "build", "-t", serving, str(REPO)], timeout=3600)
                    run(
                        ["docker", "build", "--target", "pipeline", "-t", pipeline, str(REPO)],
                        timeout=3600,
                    )
                for image in (serving, pipeline):
                    run(
                        ["kind", "load", "docker-image", image, "--name", args.cluster_name],
                        timeout=1200,
                    )
            with stages.stage("manifests"):
                apply_manifests(serving, pipeline, args.ready_timeout)
            with stages.stage("compile"):
                package = workdir / "recsys-e2e.yaml"
                run(
                    [
                        recsys(),
                        "compile",
                        "--pipeline",
                        "training",
                        "--image",
                        pipeline,
                        "--serving-image",
                        serving,
                        "--output",
                        str(package),
                    ]
                )
            with stages.stage("train-champion"):
                train(package, "e2e-champion", CHAMPION_CONFIG, args)
                wait_until(
                    "InferenceService recsys Ready",
                    lambda: ready(isvc()) or None,
                    timeout=args.ready_timeout,
                )
            with stages.stage("v2-rest-grpc"):
                state["champion"] = predictor_version(args.ready_timeout)
                host = str((isvc().get("status") or {}).get("url", "")).split("://")[-1]
                state["host"] = host
                wait_until(
                    "the ingress gateway to route to the InferenceService",
                    lambda: v2.gateway_versions(gateway, host, 1),
                    timeout=args.ready_timeout,
                )
                checks.check_all_from(v2.gateway_versions(gateway, host, 5), state["champion"])
            with stages.stage("train-canary"):
                train(package, "e2e-canary", CANARY_CONFIG, args)

                def canary_ready() -> bool | None:
                    obj = isvc()
                    traffic = obj.get("status", {}).get("components", {}).get("predictor", {})
                    split = [t.get("percent") for t in traffic.get("traffic") or []]
                    return True if ready(obj) and CANARY_PERCENT in split else None

                wait_until(
                    f"the canary at {CANARY_PERCENT}%", canary_ready, timeout=args.ready_timeout
                )
            with stages.stage("split"):
                canary, share = checks.check_split(
                    v2.gateway_versions(gateway, state["host"], args.requests),
                    state["champion"],
                    CANARY_PERCENT,
                )
                print(f"  canary {canary} answered {share:.1%} of {args.requests}", flush=True)
            with stages.stage("rollback"):
                run(ROLLBACK)
                wait_until(
                    "the champion at 100%",
                    lambda: checks.check_rolled_back(isvc()) or None,
                    timeout=args.ready_timeout,
                )
                checks.check_all_from(
                    v2.gateway_versions(gateway, state["host"], args.requests // 2),
                    state["champion"],
                )
    except (StageFailed, KeyboardInterrupt):
        passed = False
    else:
        passed = True
    if created and not args.keep:
        try:
            with stages.stage("delete-cluster"):
                run(["kind", "delete", "cluster", "--name", args.cluster_name], timeout=600)
        except StageFailed:
            passed = False
    elif created:
        print(f"cluster kept: kind delete cluster --name {args.cluster_name}", flush=True)
    if not passed:
        return 1
    print(f"end-to-end test passed in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
