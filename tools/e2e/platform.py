"""What the end-to-end test installs, and with which versions.

The versions are not repeated here: they are read from terraform/variables.tf (the `versions`
variable's defaults and `kind_node_image`), so the kind test installs what `terraform apply`
installs and the two cannot drift. The commands mirror terraform/modules/platform/*.tf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VARIABLES_TF = REPO / "terraform" / "variables.tf"
KNATIVE_CHART = REPO / "terraform" / "modules" / "platform" / "charts" / "knative-serving"
# The node port of the Istio ingress gateway on kind (terraform pins the same one).
INGRESS_NODE_PORT = 31080
# What the kind test needs from terraform's versions (the others are unused here).
REQUIRED_VERSIONS = (
    "cert_manager",
    "istio",
    "knative_operator",
    "knative_serving",
    "kserve",
    "kubeflow_pipelines",
    "kube_prometheus_stack",
)
KFP_MANIFESTS = "github.com/kubeflow/pipelines/manifests/kustomize"


class VersionError(ValueError):
    """terraform/variables.tf does not say a version the test needs."""


def platform_versions(variables_tf: Path = VARIABLES_TF) -> dict[str, str]:
    """{component: version} from the defaults of terraform's `versions` variable."""
    text = variables_tf.read_text()
    block = re.search(r'variable\s+"versions"\s*\{(.*?)\n\}', text, re.DOTALL)
    if block is None:
        raise VersionError(f'{variables_tf.name}: no `variable "versions"` block')
    found = dict(re.findall(r'(\w+)\s*=\s*optional\(string,\s*"([^"]+)"\)', block.group(1)))
    missing = [name for name in REQUIRED_VERSIONS if name not in found]
    if missing:
        raise VersionError(f"{variables_tf.name}: no default version for {', '.join(missing)}")
    return found


def kind_node_image(variables_tf: Path = VARIABLES_TF) -> str:
    """The kindest/node image terraform's kind cluster uses."""
    block = re.search(
        r'variable\s+"kind_node_image"\s*\{(.*?)\n\}', variables_tf.read_text(), re.DOTALL
    )
    image = block and re.search(r'default\s*=\s*"([^"]+)"', block.group(1))
    if not image:
        raise VersionError(f"{variables_tf.name}: no default for kind_node_image")
    return image.group(1)


def kind_config(workers: int, host_port: int) -> str:
    """The kind cluster of terraform/modules/cluster-kind: the ingress node port on the host."""
    if not 0 <= workers <= 5:
        raise ValueError(f"workers must be between 0 and 5, not {workers}")
    if not 0 < host_port < 65536:
        raise ValueError(f"host port must be a TCP port number, not {host_port}")
    control = {
        "role": "control-plane",
        "extraPortMappings": [
            {
                "containerPort": INGRESS_NODE_PORT,
                "hostPort": host_port,
                "listenAddress": "127.0.0.1",
            }
        ],
    }
    config = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [control] + [{"role": "worker"}] * workers,
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class Step:
    """One install command, the condition to wait for after it (kubectl wait args), and helm
    values as YAML (written to a file and passed with -f)."""

    name: str
    argv: tuple[str, ...]
    wait: tuple[str, ...] = ()
    values: str = ""


def _helm(
    release: str,
    chart: str,
    namespace: str,
    version: str | None,
    *extra: str,
    repo: str | None = None,
) -> tuple[str, ...]:
    argv = [
        "helm",
        "upgrade",
        "--install",
        release,
        chart,
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "10m",
    ]
    if repo:
        argv += ["--repo", repo]
    if version:
        argv += ["--version", version]
    return (*argv, *extra)


def install_steps(versions: dict[str, str]) -> list[Step]:
    """terraform/modules/platform, as helm and kubectl commands, in dependency order."""
    v = versions
    kfp_ref = v["kubeflow_pipelines"]
    # terraform's values for the gateway on kind: a NodePort service, HTTP on the mapped port.
    gateway_values = yaml.safe_dump(
        {
            "service": {
                "type": "NodePort",
                "ports": [
                    {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"},
                    {
                        "name": "http2",
                        "port": 80,
                        "targetPort": 80,
                        "protocol": "TCP",
                        "nodePort": INGRESS_NODE_PORT,
                    },
                    {"name": "https", "port": 443, "targetPort": 443, "protocol": "TCP"},
                ],
            }
        }
    )
    istio = "https://istio-release.storage.googleapis.com/charts"
    return [
        Step(
            "cert-manager",
            _helm(
                "cert-manager",
                "cert-manager",
                "cert-manager",
                v["cert_manager"],
                "--set",
                "crds.enabled=true",
                repo="https://charts.jetstack.io",
            ),
        ),
        Step("istio-base", _helm("istio-base", "base", "istio-system", v["istio"], repo=istio)),
        Step("istiod", _helm("istiod", "istiod", "istio-system", v["istio"], repo=istio)),
        Step(
            "istio-ingressgateway",
            _helm("istio-ingressgateway", "gateway", "istio-system", v["istio"], repo=istio),
            values=gateway_values,
        ),
        Step(
            "knative-operator",
            _helm(
                "knative-operator",
                "knative-operator",
                "knative-operator",
                v["knative_operator"],
                repo="https://knative.github.io/operator",
            ),
        ),
        Step(
            "knative-serving",
            _helm(
                "knative-serving",
                str(KNATIVE_CHART),
                "knative-serving",
                None,
                "--set",
                f"version={v['knative_serving']}",
            ),
            wait=(
                "knativeserving/knative-serving",
                "-n",
                "knative-serving",
                "--for=condition=Ready",
                "--timeout=600s",
            ),
        ),
        # A domain routed by the external gateway (the default, svc.cluster.local, is not).
        Step(
            "knative-domain",
            (
                "kubectl",
                "patch",
                "knativeserving",
                "knative-serving",
                "-n",
                "knative-serving",
                "--type",
                "merge",
                "-p",
                '{"spec":{"config":{"domain":{"example.com":""}}}}',
            ),
            wait=(
                "knativeserving/knative-serving",
                "-n",
                "knative-serving",
                "--for=condition=Ready",
                "--timeout=600s",
            ),
        ),
        Step(
            "kserve-crd",
            _helm("kserve-crd", "oci://ghcr.io/kserve/charts/kserve-crd", "kserve", v["kserve"]),
        ),
        Step(
            "kserve",
            _helm(
                "kserve",
                "oci://ghcr.io/kserve/charts/kserve",
                "kserve",
                v["kserve"],
                "--set",
                "kserve.controller.deploymentMode=Serverless",
                "--set",
                "kserve.controller.gateway.ingressGateway.gateway="
                "knative-serving/knative-ingress-gateway",
            ),
        ),
        Step(
            "kfp-cluster-scoped",
            ("kubectl", "apply", "-k", f"{KFP_MANIFESTS}/cluster-scoped-resources?ref={kfp_ref}"),
            wait=("crd/applications.app.k8s.io", "--for=condition=established", "--timeout=120s"),
        ),
        Step(
            "kfp",
            ("kubectl", "apply", "-k", f"{KFP_MANIFESTS}/env/platform-agnostic?ref={kfp_ref}"),
            wait=(
                "deployment",
                "--all",
                "-n",
                "kubeflow",
                "--for=condition=Available",
                "--timeout=900s",
            ),
        ),
    ]


def prometheus_crds_command(versions: dict[str, str]) -> tuple[str, ...]:
    """kube-prometheus-stack rendered with its CRDs: the manifests' PodMonitor and PrometheusRule
    need the CRDs only, not the whole monitoring stack (crds_only() keeps them)."""
    return (
        "helm",
        "template",
        "crds",
        "kube-prometheus-stack",
        "--repo",
        "https://prometheus-community.github.io/helm-charts",
        "--version",
        versions["kube_prometheus_stack"],
        "--include-crds",
    )


def crds_only(rendered: str) -> str:
    """The CustomResourceDefinitions of a multi-document YAML stream, as one stream."""
    docs = [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict)]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    return yaml.safe_dump_all(crds, sort_keys=False)
