"""docker/ describes the same topology as `mmguard stack up`. No docker engine runs here, so the
compose file is validated against the Compose Specification's JSON schema and checked for the
properties a deployment relies on, and the Dockerfiles are linted with hadolint."""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
VARIABLE = re.compile(r"\$\{(\w+)(:?[?-])?([^}]*)\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$")
# Long-running services; the rest are one-off init steps.
ONE_OFF = {"airflow-init"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_matches_the_compose_specification(compose):
    jsonschema.validate(compose, json.loads(SCHEMA.read_text()))


def test_schema_rejects_a_broken_compose_file(compose):
    # The check above can fail: a service with a misspelt key is refused.
    broken = dict(compose, services={"x": {"image": "a:1", "helthcheck": {}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_every_image_is_pinned_by_version(compose):
    images = [service["image"] for service in compose["services"].values()]
    images += [line.split()[1] for path in DOCKERFILES for line in path.read_text().splitlines()
               if line.startswith("FROM ")]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, image
        assert re.search(r"\d", tag), f"{image}: tag names no version"
    assert not any("minio" in image for image in images)


def test_secrets_are_required_never_defaulted():
    text = (DOCKER / "compose.yaml").read_text()
    secrets = [m for m in VARIABLE.finditer(text) if SECRET_NAME.search(m.group(1))]
    assert {m.group(1) for m in secrets} >= {"POSTGRES_PASSWORD", "S3_SECRET_KEY",
                                            "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
                                            "MLFLOW_ADMIN_PASSWORD", "REDIS_PASSWORD"}
    for match in secrets:
        assert match.group(2) == ":?", f"{match.group(0)} must be required (${{VAR:?}})"


def test_published_ports_bind_loopback_only(compose):
    published = [port for service in compose["services"].values()
                 for port in service.get("ports", [])]
    assert published
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port


def test_long_running_services_have_healthchecks(compose):
    services = compose["services"]
    assert {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "mlflow", "postgres", "seaweedfs"} <= set(services)
    for name, service in services.items():
        if name not in ONE_OFF:
            assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"


def test_mlflow_requires_a_login(compose):
    command = compose["services"]["mlflow"]["command"]
    assert "--app-name=basic-auth" in command and "--serve-artifacts" in command
    assert "default_permission = NO_PERMISSIONS" in compose["configs"]["mlflow-auth"]["content"]


def test_dotenv_never_reaches_the_build_context():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("docker/.env", ".env", ".stack/credentials.json", ".dvc/config.local"):
        assert any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.replace("**/", "*/"))
                   or path.startswith(p.rstrip("/") + "/") for p in patterns), path
    # No per-Dockerfile ignore file overrides the root one.
    assert not list(DOCKER.glob("*.dockerignore"))


def test_tracked_state_files_live_on_a_volume(compose):
    for path in DOCKERFILES:
        text = path.read_text()
        assert 'for name in data.dvc dvc.lock params.yaml; do mv "${name}" seed/ && ln -s ' \
               '"state/${name}"' in text, path
    for name, service in compose["services"].items():
        if name.startswith("airflow"):
            assert "workspace-state:/opt/mmguard/state" in service["volumes"], name
            assert service["environment"]["MMGUARD_PROJECT_DIR"] == "/opt/mmguard"


def test_celery_profile_runs_train_on_a_gpu_worker(compose):
    services = compose["services"]
    celery = {name for name, s in services.items() if "celery" in s.get("profiles", [])}
    assert {"redis", "airflow-worker", "airflow-worker-gpu"} <= celery
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][-4:-2] == ["--queues", "gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.train"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "nvidia/cuda:" in (DOCKER / "Dockerfile.train").read_text()
    assert "CeleryExecutor" in (DOCKER / "compose.yaml").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
