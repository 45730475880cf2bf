"""The Terraform code (`terraform/`), checked offline.

There is no cloud account and no cluster here, and the Terraform registry cannot be reached, so
nothing is planned or applied. Instead:

- every .tf file is parsed with `python-hcl2`, and the parsed code is checked for the project's
  rules: Terraform and every provider version-pinned, registry modules pinned, every variable
  typed and described, secret-looking variables and outputs marked sensitive;
- every file under terraform/ is scanned for hard-coded credentials;
- `terraform fmt -check -recursive` runs with the real binary (it needs no network);
- `terraform validate` runs after `terraform init -backend=false` in a scratch copy when init can
  download the providers and modules; where it cannot (as on a machine without registry access)
  that one test is skipped and says why;
- checkov scans the Terraform code (terraform framework) and the manifests as rendered by
  `kubectl kustomize` (kubernetes framework). Every finding must be fixed or skipped where it
  is, with a reason: `#checkov:skip=<id>:<reason>` in .tf, a `checkov.io/skip<n>: <id>=<reason>`
  annotation in a manifest. Open-source checkov rates no finding, so every finding counts as
  HIGH unless checkov reports a lower severity.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tooling import require_tool

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
KUSTOMIZATIONS = [
    REPO / "manifests" / "base",
    *sorted(p for p in (REPO / "manifests" / "overlays").iterdir() if p.is_dir()),
]
MODULE_DIRS = [TERRAFORM, *sorted(p for p in (TERRAFORM / "modules").iterdir() if p.is_dir())]
TF_FILES = sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)
SECRET_WORDS = re.compile(r"password|secret|token|private_key|access_key", re.IGNORECASE)


def unquote(value):
    """python-hcl2 keeps the quotes of string literals ('"x"'); strip them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict:
    import hcl2

    with path.open() as handle:
        return hcl2.load(handle)


def blocks(parsed: dict, kind: str):
    """(name, body) of each labelled block of one kind, e.g. every `variable "x" {}`."""
    for block in parsed.get(kind, []):
        for name, body in block.items():
            if not name.startswith("__"):
                yield unquote(name), body


@pytest.fixture(scope="module")
def parsed() -> dict[Path, dict]:
    return {path: parse(path) for path in TF_FILES}


def test_layout_is_complete():
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md", "terraform.tfvars.example"):
        assert (TERRAFORM / name).is_file(), name
    assert {p.name for p in MODULE_DIRS[1:]} == {"cluster-eks", "cluster-kind", "platform"}
    for directory in MODULE_DIRS:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (directory / name).is_file(), directory / name


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_file_parses(path):
    assert isinstance(parse(path), dict)


def test_parser_rejects_broken_hcl(tmp_path):
    broken = tmp_path / "broken.tf"
    broken.write_text('variable "x" {\n  type = string\n')
    from lark.exceptions import LarkError  # python-hcl2's parser

    with pytest.raises(LarkError):
        parse(broken)


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: p.name)
def test_terraform_and_providers_are_pinned(parsed, directory):
    (terraform,) = parsed[directory / "versions.tf"]["terraform"]
    assert unquote(terraform["required_version"]).startswith(">=")
    (providers,) = terraform["required_providers"]
    providers = {k: v for k, v in providers.items() if not k.startswith("__")}
    assert providers
    for name, spec in providers.items():
        assert "/" in unquote(spec["source"]), name
        version = unquote(spec.get("version", ""))
        # A lower and an upper bound: `~>` gives both, a bare `>=` would take any future major.
        assert version.startswith("~>") or ("<" in version and ">" in version), (name, version)
    # Every provider a module's resources use is declared in that module.
    used = set()
    for path, content in parsed.items():
        if path.parent == directory:
            for block in content.get("resource", []) + content.get("data", []):
                used |= {unquote(kind).split("_")[0] for kind in block if not kind.startswith("__")}
    assert used <= providers.keys(), used - providers.keys()


def test_registry_modules_are_version_pinned(parsed):
    for path, content in parsed.items():
        for name, body in blocks(content, "module"):
            source = unquote(body["source"])
            if not source.startswith("./"):
                assert unquote(body.get("version", "")), f"{path.name}: module {name} has no version"


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: p.name)
def test_every_variable_is_typed_described_and_secrets_are_sensitive(parsed, directory):
    variables = list(blocks(parsed[directory / "variables.tf"], "variable"))
    assert variables
    for name, body in variables:
        assert unquote(body.get("description", "")).strip(), f"{directory.name}: {name} has no description"
        assert body.get("type"), f"{directory.name}: {name} has no type"
        if SECRET_WORDS.search(name):
            assert body.get("sensitive") is True, f"{directory.name}: {name} should be sensitive"
    # Variables live in variables.tf only, so the file is the whole interface of the module.
    for path, content in parsed.items():
        if path.parent == directory and path.name != "variables.tf":
            assert not content.get("variable"), f"variable declared in {path}"


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: p.name)
def test_every_output_is_described_and_secrets_are_sensitive(parsed, directory):
    for name, body in blocks(parsed[directory / "outputs.tf"], "output"):
        assert unquote(body.get("description", "")).strip(), f"{directory.name}: output {name}"
        if SECRET_WORDS.search(name) or name == "connection":
            assert body.get("sensitive") is True, f"{directory.name}: output {name} should be sensitive"


def test_root_offers_kind_and_eks_and_installs_the_platform(parsed):
    main = parsed[TERRAFORM / "main.tf"]
    modules = dict(blocks(main, "module"))
    assert unquote(modules["cluster_eks"]["source"]) == "./modules/cluster-eks"
    assert unquote(modules["cluster_kind"]["source"]) == "./modules/cluster-kind"
    assert "cluster_type" in modules["cluster_eks"]["count"]
    assert "cluster_type" in modules["cluster_kind"]["count"]
    platform_text = "\n".join(p.read_text() for p in (TERRAFORM / "modules" / "platform").glob("*.tf"))
    for chart in ('chart      = "cert-manager"', 'chart      = "base"', 'chart      = "istiod"',
                  'chart      = "gateway"', 'chart      = "knative-operator"', 'chart      = "kserve-crd"',
                  'chart      = "kserve"', 'chart      = "mlflow"', 'chart      = "kube-prometheus-stack"',
                  'repository = "oci://ghcr.io/kserve/charts"', "kubeflow/pipelines/manifests"):
        assert chart in platform_text, chart


# Patterns of credentials that must never be committed. Interpolations ("${...}") and empty
# strings are fine; literal values assigned to secret-looking names are not.
CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*\"?[A-Za-z0-9/+]{30,}"),
    # A literal string assigned to a secret-looking name. Names ending in key/name/ref/file
    # name where a secret is (passwordKey = "password"), not the secret itself.
    re.compile(
        r"(?i)\b(?![a-z_-]*(?:key|keys|name|ref|file)\b)[a-z_-]*(password|secret|token)[a-z_-]*"
        r"\s*=\s*\"(?!\$\{)[^\"]+\""
    ),
    re.compile(r"(?i)(ghp|github_pat|glpat|xox[bp])[-_][A-Za-z0-9_]{10,}"),
]


def test_no_hard_coded_credentials():
    offenders = []
    for path in sorted(TERRAFORM.rglob("*")):
        if not path.is_file() or ".terraform" in path.parts:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.lstrip().startswith(("#", "//")):
                continue
            for pattern in CREDENTIAL_PATTERNS:
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(TERRAFORM)}:{number}: {line.strip()}")
    assert offenders == []


def test_credential_scan_catches_a_literal_password():
    assert any(p.search('  master_password = "hunter2hunter2"') for p in CREDENTIAL_PATTERNS)
    assert any(p.search('GRAFANA_TOKEN = "abc123"') for p in CREDENTIAL_PATTERNS)
    assert not any(p.search('  password = random_password.db.result') for p in CREDENTIAL_PATTERNS)
    assert not any(p.search('  passwordKey = "password"') for p in CREDENTIAL_PATTERNS)


def test_passwords_are_generated():
    text = "\n".join(p.read_text() for p in TF_FILES)
    assert 'resource "random_password"' in text


# --- the terraform binary ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def terraform() -> str:
    path = shutil.which("terraform")
    if path is None:
        pytest.skip("no `terraform` binary on PATH: fmt/validate need it")
    return path


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_terraform_fmt(terraform):
    proc = _run([terraform, "fmt", "-check", "-recursive", "-diff", "-no-color"], TERRAFORM)
    assert proc.returncode == 0, f"terraform fmt would change files:\n{proc.stdout}{proc.stderr}"


def test_terraform_validate(terraform, tmp_path):
    # A scratch copy: init writes .terraform/ and a lock file, which do not belong in the repo.
    work = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, work, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    init = _run([terraform, "init", "-backend=false", "-input=false", "-no-color"], work)
    if init.returncode != 0:
        lines = [line.strip(" │╷╵") for line in init.stderr.splitlines()]
        errors = [line for line in lines if line.startswith("Error") or "registry" in line]
        pytest.skip(
            "`terraform init -backend=false` could not download providers/modules here, so "
            f"validate cannot run: {' '.join(errors[:3]) or init.stderr.strip()[-300:]}"
        )
    proc = _run([terraform, "validate", "-no-color"], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- checkov ---------------------------------------------------------------------------------------


def checkov_binary() -> str:
    # checkov lives in its own venv (.venv-tools): its pinned dependencies clash with ours.
    return require_tool("checkov", "`make tools` installs it", REPO / ".venv-tools" / "bin" / "checkov")


def checkov_findings(directory: Path, framework: str) -> tuple[list[dict], list[dict]]:
    """Run checkov offline (--skip-download: no platform API calls); (failed, skipped) checks."""
    proc = subprocess.run(
        [checkov_binary(), "-d", str(directory), "--framework", framework, "-o", "json",
         "--quiet", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=300, cwd=directory,
        check=False,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    reports = json.loads(proc.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r.get("summary", {}).get("parsing_errors", 0) == 0 for r in reports), reports
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    return failed, skipped


def blocking(failed: list[dict]) -> list[str]:
    """Findings rated HIGH or CRITICAL, and unrated ones (open-source checkov rates none)."""
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in failed
        if (c.get("severity") or "HIGH").upper() in {"HIGH", "CRITICAL"}
    ]


def _assert_clean(failed: list[dict], skipped: list[dict]) -> None:
    assert blocking(failed) == []
    for check in skipped:
        assert (check.get("suppress_comment") or "").strip(), f"{check['check_id']} skipped without a reason"


def test_checkov_finds_nothing_unexplained_in_terraform():
    failed, skipped = checkov_findings(TERRAFORM, "terraform")
    _assert_clean(failed, skipped)


def test_checkov_finds_nothing_unexplained_in_the_rendered_manifests(tmp_path):
    kubectl = require_tool("kubectl", "needed to render the manifests with `kubectl kustomize`")
    for path in KUSTOMIZATIONS:
        proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        (tmp_path / f"{path.name}.yaml").write_text(proc.stdout)
    failed, skipped = checkov_findings(tmp_path, "kubernetes")
    _assert_clean(failed, skipped)
    # The skips are deliberate and few; a growing list needs a look, not a silent pass.
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"}
