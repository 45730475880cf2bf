"""The kind end-to-end test's parts that run without a cluster (tools/e2e/, tools/e2e_kind.py).

No Docker engine or cluster here, so the stages that create a cluster, install the platform
and train on Kubeflow cannot run. What they are made of is checked with the real things that
do run: the versions against terraform/ as python-hcl2 parses it, the rendered dev overlay from
the real `kubectl kustomize`, the v2 calls (tritonclient REST and gRPC, the gateway requests)
against a real predictor on loopback ports, the run id parsing against the real `recsys submit`
talking to the local KFP API double of test_submit.py, the options through the shell entry in a
subprocess, and the runner, waiting and checks on their own inputs.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

import e2e_kind
from e2e import checks, platform, runner
from e2e.options import parse_args
from tooling import require_tool

SCRIPT = REPO / "tools" / "e2e-kind.sh"


def hcl(path: Path) -> dict:
    import hcl2

    with path.open() as handle:
        return hcl2.load(handle)


def _unquote(value):
    return value[1:-1] if isinstance(value, str) and value[:1] == value[-1:] == '"' else value


def _terraform_variable(name: str) -> dict:
    for block in hcl(platform.VARIABLES_TF)["variable"]:
        for key, body in block.items():
            if _unquote(key) == name:
                return body
    raise AssertionError(f"terraform has no variable {name}")


# --- versions and install commands: terraform's ----------------------------------------------


def test_versions_are_terraforms_defaults():
    versions = platform.platform_versions()
    # python-hcl2 renders `optional(string, "v1.16.2")` as text; the version is its last literal.
    declared = _terraform_variable("versions")["type"]
    text = json.dumps(declared)
    for name, version in versions.items():
        assert f"{name}" in text and version in text, (name, version)
    assert set(platform.REQUIRED_VERSIONS) <= set(versions)
    assert versions["kserve"].startswith("v") and versions["kubeflow_pipelines"][0].isdigit()


def test_kind_node_image_is_terraforms():
    assert platform.kind_node_image() == _unquote(_terraform_variable("kind_node_image")["default"])


def test_a_version_missing_from_terraform_is_one_clear_error(tmp_path):
    broken = tmp_path / "variables.tf"
    broken.write_text(platform.VARIABLES_TF.read_text().replace("kserve ", "kserve_renamed "))
    with pytest.raises(platform.VersionError, match="no default version for kserve"):
        platform.platform_versions(broken)
    (tmp_path / "empty.tf").write_text('variable "x" {\n}\n')
    with pytest.raises(platform.VersionError, match="no `variable"):
        platform.platform_versions(tmp_path / "empty.tf")
    with pytest.raises(platform.VersionError, match="kind_node_image"):
        platform.kind_node_image(tmp_path / "empty.tf")


def test_kind_config_maps_terraforms_ingress_node_port():
    kind_tf = (REPO / "terraform" / "modules" / "cluster-kind" / "main.tf").read_text()
    platform_tf = (REPO / "terraform" / "modules" / "platform" / "main.tf").read_text()
    assert f"container_port = {platform.INGRESS_NODE_PORT}" in kind_tf
    assert f"nodePort = {platform.INGRESS_NODE_PORT}" in platform_tf
    config = yaml.safe_load(platform.kind_config(workers=2, host_port=18080))
    control, *workers = config["nodes"]
    assert control["role"] == "control-plane" and [w["role"] for w in workers] == ["worker"] * 2
    assert control["extraPortMappings"] == [
        {
            "containerPort": platform.INGRESS_NODE_PORT,
            "hostPort": 18080,
            "listenAddress": "127.0.0.1",
        }
    ]
    with pytest.raises(ValueError, match="workers"):
        platform.kind_config(workers=6, host_port=18080)
    with pytest.raises(ValueError, match="port"):
        platform.kind_config(workers=1, host_port=70000)


def test_install_steps_follow_terraforms_order_and_versions():
    versions = platform.platform_versions()
    steps = platform.install_steps(versions)
    names = [s.name for s in steps]
    before = [
        ("cert-manager", "kserve"),
        ("istiod", "knative-operator"),
        ("knative-serving", "kserve"),
        ("kserve-crd", "kserve"),
        ("kfp-cluster-scoped", "kfp"),
    ]
    for first, then in before:
        assert names.index(first) < names.index(then), (first, then)
    by_name = {s.name: s for s in steps}
    for step, key in [
        ("cert-manager", "cert_manager"),
        ("istiod", "istio"),
        ("kserve", "kserve"),
        ("knative-operator", "knative_operator"),
    ]:
        argv = by_name[step].argv
        assert argv[argv.index("--version") + 1] == versions[key]
    assert f"version={versions['knative_serving']}" in by_name["knative-serving"].argv
    assert Path(by_name["knative-serving"].argv[4]) == platform.KNATIVE_CHART
    assert (platform.KNATIVE_CHART / "Chart.yaml").is_file()
    assert "kserve.controller.deploymentMode=Serverless" in by_name["kserve"].argv
    for step in ("kfp-cluster-scoped", "kfp"):
        assert by_name[step].argv[-1].endswith(f"?ref={versions['kubeflow_pipelines']}")
    gateway = yaml.safe_load(by_name["istio-ingressgateway"].values)["service"]
    assert gateway["type"] == "NodePort"
    assert {p["name"]: p.get("nodePort") for p in gateway["ports"]}[
        "http2"
    ] == platform.INGRESS_NODE_PORT
    # Every helm release from a repository is version-pinned.
    for step in steps:
        if step.argv[:2] == ("helm", "upgrade") and step.name != "knative-serving":
            assert "--version" in step.argv, step.name


def test_crds_only_keeps_the_custom_resource_definitions():
    rendered = yaml.safe_dump_all(
        [
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "podmonitors.monitoring.coreos.com"},
            },
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "operator"}},
            None,
        ]
    )
    kept = list(yaml.safe_load_all(platform.crds_only(rendered)))
    assert [d["metadata"]["name"] for d in kept] == ["podmonitors.monitoring.coreos.com"]
    assert platform.prometheus_crds_command(platform.platform_versions())[-1] == "--include-crds"


# --- options -----------------------------------------------------------------------------------


def test_options_defaults_and_keep():
    args = parse_args([])
    assert (args.cluster_name, args.keep, args.ingress_port, args.requests) == (
        "recsys-e2e",
        False,
        31080,
        400,
    )
    assert parse_args(["--keep", "--workers", "0"]).keep is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cluster-name", "Bad_Name"], "lowercase letters"),
        (["--ingress-port", "80"], "port from 1024"),
        (["--requests", "10"], "at least 50"),
        (["--run-timeout", "0"], "greater than 0"),
        (["--workers", "9"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(argv, message):
    proc = subprocess.run(
        ["bash", str(SCRIPT), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_help_tells_what_the_test_does():
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0
    for word in ("kind", "--keep", "terraform/variables.tf", "kubectl patch", "gRPC"):
        assert word in proc.stdout


def test_the_shell_entry_needs_the_virtualenv():
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": "/nonexistent/python"},
    )
    assert proc.returncode == 2 and "make install" in proc.stderr


# --- the stage runner and waiting ------------------------------------------------------------


class Clock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_retries_transient_errors_then_returns():
    clock, calls = Clock(), []

    def probe():
        calls.append(clock.now)
        if len(calls) == 1:
            raise runner.E2EError("isvc not found")  # kubectl before the object exists
        if len(calls) == 2:
            raise ConnectionRefusedError("port-forward not ready")
        return "ready" if len(calls) == 4 else None

    assert (
        runner.wait_until("x", probe, timeout=60, interval=5, clock=clock, sleep=clock.sleep)
        == "ready"
    )
    assert calls == [0, 5, 10, 15]


def test_wait_until_times_out_naming_what_and_the_last_error():
    clock = Clock()

    def probe():
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(
        runner.E2EError, match=r"timed out after 30s waiting for the canary.*refused"
    ):
        runner.wait_until(
            "the canary", probe, timeout=30, interval=7, clock=clock, sleep=clock.sleep
        )
    assert clock.now == 30  # the last sleep is cut to the deadline


def test_wait_until_stops_at_once_on_a_fatal_error():
    clock = Clock()
    with pytest.raises(runner.Fatal, match="ended FAILED"):
        runner.wait_until(
            "run",
            lambda: checks.check_run_state("FAILED", "r1") or None,
            timeout=600,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == 0


def test_run_reports_exit_code_missing_tools_and_timeouts():
    assert runner.run(["bash", "-c", "echo hi"]).stdout == "hi\n"
    with pytest.raises(runner.E2EError, match="exited 3: boom"):
        runner.run(["bash", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(runner.E2EError, match="not found on PATH"):
        runner.run(["no-such-tool-here"])
    with pytest.raises(runner.E2EError, match="did not finish in 1s"):
        runner.run(["sleep", "5"], timeout=1)


def test_stages_print_one_line_each_and_report_the_failing_stage():
    out, clock, reports = io.StringIO(), Clock(), []

    def report(stage, reason):
        reports.append((stage, reason))
        return f"REPORT {stage}"

    stages = runner.Stages(out=out, report=report, clock=clock)
    with stages.stage("cluster"):
        clock.sleep(12.34)
    with pytest.raises(runner.StageFailed) as failed, stages.stage("platform"):
        clock.sleep(2)
        raise runner.E2EError("helm exited 1")
    assert failed.value.stage == "platform"
    assert out.getvalue().splitlines() == [
        "[cluster] ok 12.3s",
        "[platform] FAILED 2.0s: helm exited 1",
        "REPORT platform",
    ]
    assert reports == [("platform", "helm exited 1")] and stages.done == [("cluster", 12.34)]


POD_RUNNING = {
    "metadata": {"namespace": "recsys", "name": "ok"},
    "spec": {"containers": [{"name": "a"}]},
    "status": {"phase": "Running", "containerStatuses": [{"ready": True}]},
}
POD_CRASHING = {
    "metadata": {"namespace": "recsys", "name": "predictor"},
    "spec": {
        "initContainers": [{"name": "storage-initializer"}],
        "containers": [{"name": "kserve-container"}],
    },
    "status": {"phase": "Running", "containerStatuses": [{"ready": False}]},
}
POD_DONE = {
    "metadata": {"namespace": "kubeflow", "name": "step"},
    "spec": {"containers": [{"name": "main"}]},
    "status": {"phase": "Succeeded"},
}


def test_failure_report_has_the_stage_the_last_events_and_the_failing_pods_logs():
    asked = []

    def kubectl(args):
        asked.append(args)
        if args[:2] == ["get", "events"]:
            return "\n".join(f"event {i}" for i in range(100))
        if args[:2] == ["get", "pods"]:
            return json.dumps({"items": [POD_RUNNING, POD_CRASHING, POD_DONE]})
        if args[-2] == "storage-initializer" or args[4] == "storage-initializer":
            raise runner.E2EError("container not started")
        return "Traceback: model not found\n"

    text = runner.failure_report("train-champion", "run ended FAILED", kubectl, events=3)
    lines = text.splitlines()
    assert lines[0] == "=== end-to-end test failed in stage 'train-champion': run ended FAILED"
    assert lines[1:5] == ["=== last events", "event 97", "event 98", "event 99"]
    assert "=== logs recsys/predictor [storage-initializer]" in lines
    assert "=== logs recsys/predictor [kserve-container]" in lines
    assert "Traceback: model not found" in lines and "(no logs: container not started)" in lines
    assert not any("recsys/ok" in line or "kubeflow/step" in line for line in lines)


def test_failure_report_without_a_cluster_still_reports():
    def kubectl(args):
        raise runner.E2EError("`kubectl` not found on PATH")

    text = runner.failure_report("cluster", "kind exited 1", kubectl)
    assert "stage 'cluster'" in text and "=== no events" in text and "=== no pods" in text


# --- checks on the rendered dev overlay (the real kubectl kustomize) -------------------------


@pytest.fixture(scope="module")
def dev_objects() -> list[dict]:
    kubectl = require_tool("kubectl", "renders manifests/overlays/dev")
    proc = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / "overlays" / "dev")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def test_the_dev_overlay_gets_the_loaded_images_and_passes_the_checks(dev_objects):
    images = {
        checks.MANIFEST_IMAGES[0]: "kind.local/recsys:e2e",
        checks.MANIFEST_IMAGES[1]: "kind.local/recsys-pipeline:e2e",
    }
    objects = checks.set_images(dev_objects, images)
    isvc = checks.check_rendered(objects, "kind.local/recsys:e2e")
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == "kind.local/recsys:e2e"
    every = {c["image"] for o in objects for c in checks._containers(o)}
    assert "kind.local/recsys:e2e" in every and not any("ghcr.io/recsys-mlops" in i for i in every)
    # The others (PostgreSQL, MinIO, Redis, MLflow) keep their pinned images.
    assert any(i.startswith("docker.io/library/postgres:") for i in every)
    # The objects are copies: the rendering itself is untouched.
    assert any(
        c.get("image", "").startswith(checks.MANIFEST_IMAGES[0])
        for o in dev_objects
        for c in checks._containers(o)
    )


def test_the_checks_refuse_the_overlay_with_the_registry_images(dev_objects):
    with pytest.raises(runner.E2EError, match="runs .*ghcr.io/recsys-mlops/recsys"):
        checks.check_rendered(dev_objects, "kind.local/recsys:e2e")
    objects = checks.set_images(dev_objects, {checks.MANIFEST_IMAGES[0]: "kind.local/recsys:e2e"})
    isvc = next(o for o in objects if o["kind"] == "InferenceService")
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    with pytest.raises(runner.E2EError, match="needs Serverless"):
        checks.check_rendered(objects, "kind.local/recsys:e2e")
    with pytest.raises(runner.E2EError, match="empty"):
        checks.check_rendered([], "kind.local/recsys:e2e")


@pytest.mark.parametrize(
    "image, name",
    [
        ("ghcr.io/recsys-mlops/recsys:0.1.0", "ghcr.io/recsys-mlops/recsys"),
        ("localhost:5000/recsys:e2e", "localhost:5000/recsys"),
        ("localhost:5000/recsys", "localhost:5000/recsys"),
        ("redis@sha256:abcd", "redis"),
    ],
)
def test_image_name_drops_tag_and_digest_only(image, name):
    assert checks.image_name(image) == name


# --- the v2 calls against a real predictor ----------------------------------------------------


def test_v2_calls_over_rest_grpc_and_a_gateway_host_header(small_model_dir, tmp_path):
    from serving_process import start_server, stop, wait_live, wait_ready

    server = start_server(small_model_dir, tmp_path)
    try:
        wait_live(server)
        wait_ready(server)
        # tritonclient's gRPC module clashes with kserve's in one process: a process of its own.
        code = (
            "import json, sys; sys.path.insert(0, 'tools'); from e2e import v2; "
            f"print(json.dumps([v2.rest_and_grpc_version({server.http!r}, {server.grpc!r}), "
            f"v2.gateway_versions('http://{server.http}', 'recsys.recsys.example.com', 3)]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(server)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, gateway = json.loads(proc.stdout)
    served = json.loads((small_model_dir / "manifest.json").read_text())["model_version"]
    assert version == served and gateway == [served] * 3


def test_v2_answer_check_refuses_malformed_answers():
    good = {
        "model_name": "recsys",
        "model_version": "v7",
        "outputs": [
            {"name": "item_ids", "shape": [3, 5], "data": ["i"] * 15},
            {"name": "scores", "shape": [3, 5], "data": [0.1] * 15},
        ],
    }
    assert checks.check_v2_answer(good, 3, 5) == "v7"
    bad_shape = json.loads(json.dumps(good))
    bad_shape["outputs"][1]["shape"] = [3, 4]
    for answer, message in [
        ({**good, "model_name": "other"}, "not 'recsys'"),
        ({**good, "model_version": ""}, "no model_version"),
        ({**good, "outputs": good["outputs"][:1]}, "no output 'scores'"),
        (bad_shape, r"shape \[3, 4\]"),
    ]:
        with pytest.raises(runner.E2EError, match=message):
            checks.check_v2_answer(answer, 3, 5)


# --- the split and the rollback -----------------------------------------------------------------


def test_split_accepts_a_ten_percent_canary_and_names_it():
    versions = ["champ"] * 360 + ["canary"] * 40
    assert checks.check_split(versions, "champ", 10) == ("canary", 0.1)
    # 4 binomial sigmas at 400 requests: 10% ± 6.25% accepted, 17% is not.
    assert checks.check_split(["champ"] * 340 + ["canary"] * 60, "champ", 10)[1] == 0.15
    with pytest.raises(runner.E2EError, match=r"answered 17.0% of 400 requests, expected 10% ±"):
        checks.check_split(["champ"] * 332 + ["canary"] * 68, "champ", 10)


@pytest.mark.parametrize(
    "versions, message",
    [
        (["canary"] * 40, "the champion .* answered none"),
        (["champ"] * 400, "saw none"),
        (["champ"] * 360 + ["a"] * 20 + ["b"] * 20, r"saw \['a', 'b'\]"),
        ([], "no answers"),
    ],
)
def test_split_refuses_what_is_not_one_canary_beside_the_champion(versions, message):
    with pytest.raises(runner.E2EError, match=message):
        checks.check_split(versions, "champ", 10)


def test_after_the_rollback_every_answer_is_the_champions():
    checks.check_all_from(["champ"] * 200, "champ")
    with pytest.raises(runner.E2EError, match="1 of 200 answers came from"):
        checks.check_all_from(["champ"] * 199 + ["canary"], "champ")


def _isvc_traffic(*entries):
    return {
        "status": {
            "components": {
                "predictor": {
                    "traffic": [
                        {"revisionName": name, "percent": percent, "latestRevision": latest}
                        for name, percent, latest in entries
                    ]
                }
            }
        }
    }


def test_rolled_back_reads_kserves_traffic_status():
    assert checks.check_rolled_back(_isvc_traffic(("r1", 100, False), ("r2", 0, True)))
    # A 0% target may be left out of the status: the champion at 100% is what counts.
    assert checks.check_rolled_back(_isvc_traffic(("r1", 100, False)))
    assert not checks.check_rolled_back(_isvc_traffic(("r1", 90, False), ("r2", 10, True)))
    assert not checks.check_rolled_back(_isvc_traffic(("r2", 100, True)))
    assert not checks.check_rolled_back({})


def test_the_rollback_is_the_readmes_command_character_for_character():
    documented = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("kubectl patch isvc") and 'canaryTrafficPercent":0' in line
    ]
    assert documented and shlex.split(documented[0]) == list(e2e_kind.ROLLBACK)


# --- the run id of `recsys submit`, and the run states -----------------------------------------


def test_run_id_comes_from_what_recsys_submit_prints(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "submit_double", Path(__file__).parent / "test_submit.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    double = module.KfpApiDouble()
    try:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "recsys"),
                "submit",
                "--host",
                double.host,
                "--param",
                "seed=3",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        double.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert checks.submitted_run_id(proc.stdout) == "run-123"
    with pytest.raises(runner.E2EError, match="printed no run id"):
        checks.submitted_run_id("error: no host\n")


def test_run_states():
    assert checks.check_run_state("SUCCEEDED", "r") is True
    assert (
        checks.check_run_state("RUNNING", "r") is False
        and checks.check_run_state(None, "r") is False
    )
    for state in ("FAILED", "CANCELED"):
        with pytest.raises(runner.Fatal, match=f"ended {state}"):
            checks.check_run_state(state, "r")


def test_a_failing_preflight_reports_exits_1_and_creates_no_cluster(tmp_path):
    # An empty PATH: no docker, kind, kubectl or helm, whatever this machine has.
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "e2e_kind.py"), "--cluster-name", "recsys-e2e-test"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(tmp_path)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"\[preflight\] FAILED \d+\.\ds: `docker` not found on PATH", lines[0])
    assert lines[1] == (
        "=== end-to-end test failed in stage 'preflight': `docker` not found on PATH (no cluster yet)"
    )
    assert len(lines) == 2 and "Traceback" not in proc.stderr


@pytest.fixture()
def unreachable_cluster(tmp_path, monkeypatch):
    """A kubeconfig whose API server port nothing listens on (what a deleted cluster looks like)."""
    require_tool("kubectl", "the driver's port-forwards run it")
    port = e2e_kind.free_port()  # bound, then closed: nothing listens there
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))


def test_a_port_forward_that_exits_is_fatal_for_its_wait(unreachable_cluster):
    forward = e2e_kind.port_forward("svc/ml-pipeline-ui", "kubeflow", 80, timeout=60)
    with pytest.raises(runner.Fatal, match="port-forward to kubeflow/svc/ml-pipeline-ui exited"):
        forward.__enter__()


def test_a_dropped_forward_while_a_run_goes_on_is_looked_at_again(unreachable_cluster):
    # One look fails as a plain (transient) error, so the wait for the run retries it.
    with pytest.raises(runner.E2EError, match="cannot read run r1: Fatal") as failed:
        e2e_kind.run_state("r1", timeout=60)
    assert not isinstance(failed.value, runner.Fatal)
    clock = Clock()
    with pytest.raises(runner.E2EError, match="timed out after 60s waiting for run r1"):
        runner.wait_until(
            "run r1",
            lambda: e2e_kind.run_state("r1", timeout=60),
            timeout=60,
            interval=30,
            clock=clock,
            sleep=clock.sleep,
        )
