"""``deploy/``: what can be checked without a container engine or a cluster.

Every YAML file parses; every ``search ...`` command the compose file and the Kubernetes manifests
run exists with those flags (parsed by the real ``search`` parser) and keeps the storage URL out of
its command line; the SLURM script builds the worker command it should from SLURM's variables;
the Dockerfile installs the package the README way.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.cli import build_parser
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
IMAGE = "convnet-search"


def _interpolate(text: str) -> str:
    """Compose's ``${NAME:-default}`` with the default (what ``docker compose`` runs unconfigured)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _parse(argv: list[str], where: str) -> Any:
    """``search ARGV`` parsed by the real parser (a failure names the file)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `search {' '.join(argv)}` is not a valid search command")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _search_commands(command: list[str]) -> list[list[str]]:
    """The ``search`` argvs a container command runs (directly, or inside ``sh -c``)."""
    if command[0] == "search":
        return [command[1:]]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(m) for m in re.findall(r"\bsearch ([^;&|]+)", command[2])]
    return []


def test_every_yaml_parses_and_the_kustomization_lists_every_manifest() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {"compose.yaml", "kubernetes/workers.yaml"}
    for path in files:
        for doc in _docs(path):
            assert isinstance(doc, dict), path
    listed = _docs(KUBERNETES / "kustomization.yaml")[0]["resources"]
    on_disk = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_kubernetes_runs_valid_search_commands_with_the_url_from_the_secret() -> None:
    kinds: dict[str, list[str]] = {}
    commands = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in _docs(path):
            if "kind" not in doc:
                continue  # the kustomization
            assert doc.get("apiVersion") and doc["metadata"]["name"], path
            kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
            for container in _containers(doc):
                if not container["image"].startswith(IMAGE):
                    continue
                env = {e["name"]: e for e in container.get("env", [])}
                assert env["SEARCH_STORAGE"]["valueFrom"]["secretKeyRef"]["name"] == "search-storage"
                for argv in _search_commands(container["command"]):
                    assert "--storage" not in argv, f"{path}: a URL on a command line"
                    commands.append(_parse(argv, path.name).command)
    assert sorted(set(commands)) == ["create", "dashboard", "status", "worker"]
    assert kinds["Secret"] == ["search-storage"] and kinds["StatefulSet"] == ["postgres"]
    assert sorted(kinds["Deployment"]) == ["pgbouncer", "search-dashboard"]
    assert sorted(kinds["Job"]) == ["search-workers", "study-creator"]
    workers = _docs(KUBERNETES / "workers.yaml")[0]
    assert workers["spec"]["completionMode"] == "Indexed"
    worker = _containers(workers)[-1]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    pgbouncer = _containers(_docs(KUBERNETES / "pgbouncer.yaml")[1])[0]
    assert {"name": "POOL_MODE", "value": "transaction"} in pgbouncer["env"]
    config = yaml.safe_load(_docs(KUBERNETES / "study-creator.yaml")[0]["data"]["study.yaml"])
    assert worker["command"][worker["command"].index("--study-name") + 1] == config["name"]


def test_compose_runs_valid_search_commands_in_order() -> None:
    compose = yaml.safe_load(_interpolate((DEPLOY / "compose.yaml").read_text(encoding="utf-8")))
    services = compose["services"]
    assert services["postgres"]["healthcheck"]["test"][1].startswith("pg_isready")
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    parsed = {}
    for name in ("study-creator", "worker", "dashboard"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["SEARCH_STORAGE"].startswith("postgresql+psycopg://")
        assert "--storage" not in service["command"]
        parsed[name] = _parse(service["command"], f"compose.yaml {name}")
    assert parsed["study-creator"].command == "create"
    config = parsed["study-creator"].config.replace("/config/", "study_configs/")
    assert (REPO / config).is_file()  # the mounted ../study_configs
    assert (
        parsed["worker"].command == "worker"
        and parsed["worker"].study_name == parsed["study-creator"].study_name
    )
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["depends_on"]["study-creator"]["condition"] == "service_completed_successfully"
    assert "@pgbouncer:6432/" in services["worker"]["environment"]["SEARCH_STORAGE"]


def test_the_dockerfile_installs_the_package_the_readme_way() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first = readme.split("```bash\n", 1)[1].split("\n```", 1)[0]
    install = first.split(" && search run", 1)[0].split(" && ")
    assert install == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e ."]
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    run = next(line for line in dockerfile.splitlines() if line.startswith("RUN ") and "pip install" in line)
    steps = [" ".join(s.split()) for s in run.split("&&")]
    assert install[0] in steps and install[1] in steps  # the venv, activated
    assert 'pip install --no-cache-dir -e ".[postgres]"' in steps  # README's install, with the extra
    assert (
        steps.index(install[0])
        < steps.index(install[1])
        < steps.index('pip install --no-cache-dir -e ".[postgres]"')
    )
    assert "COPY pyproject.toml README.md ./" in dockerfile and "COPY search ./search" in dockerfile
    assert re.search(r"^ARG VARIANT=cpu$", dockerfile, re.M) and "cpu|cuda" in dockerfile


def test_the_slurm_script_runs_the_worker_with_slurms_threads(tmp_path: Path) -> None:
    """The script with a stand-in ``search`` that prints its argv: what it runs, parsed for real."""
    fake = tmp_path / "bin" / "search"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env python3\nimport json, sys\nprint("ARGV " + json.dumps(sys.argv[1:]))\n')
    fake.chmod(0o755)
    script = DEPLOY / "slurm" / "search-array.sbatch"
    env = {
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "STUDY": "cifar10",
        "SEARCH_STORAGE": "postgresql+psycopg://u:secret@db/studies",
        "SLURM_CPUS_PER_TASK": "6",
        "SEARCH_WORKDIR": str(tmp_path),
        "SEARCH_ARGS": "--timeout-s 3600",
    }
    proc = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    argv = json.loads(proc.stdout.split("ARGV ", 1)[1])
    args = _parse(argv, script.name)
    assert (args.command, args.study_name, args.threads, args.timeout_s) == ("worker", "cifar10", 6, 3600.0)
    assert args.storage is None and "secret" not in proc.stdout  # the URL stays in the environment
    text = script.read_text(encoding="utf-8")
    for directive in (
        "#SBATCH --array=",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@",
        "##SBATCH --gres=gpu:1",
    ):
        assert directive in text

    no_study = subprocess.run(
        ["bash", str(script)],
        env={**env, "STUDY": ""},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert no_study.returncode != 0 and "set STUDY to the name of the study" in no_study.stderr
