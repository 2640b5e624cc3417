"""The stack's state folder: where each service keeps its data, logs and pid, the ports picked
at first start, and the generated credentials.

Everything lives under `<project>/.stack/` (git-ignored), so `down` followed by `up` finds the
same data, ports and passwords. The credentials file is created 0600 and never printed whole.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

STATE_FOLDER = ".stack"
LOOPBACK = "127.0.0.1"

# Every port the stack listens on; SeaweedFS's gRPC ports are named so they never default to
# port + 10000, which another process on a shared machine may hold.
PORT_NAMES = (
    "postgres", "s3", "s3_grpc", "weed_master", "weed_master_grpc", "weed_volume",
    "weed_volume_grpc", "weed_filer", "weed_filer_grpc", "mlflow", "airflow",
)

DVC_BUCKET = "mmguard-dvc"
MLFLOW_BUCKET = "mlflow-artifacts"
# The served model's capture log (pipeline/monitoring/capture.py), read by `mmguard drift --since`.
MONITORING_BUCKET = "mmguard-monitoring"
DB_USER = "mmguard"
AIRFLOW_DB = "airflow"
MLFLOW_DB = "mlflow"
MLFLOW_AUTH_DB = "mlflow_auth"
AIRFLOW_ADMIN = "admin"
MLFLOW_ADMIN = "admin"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    """A port the kernel hands out as free on 127.0.0.1, not already given to another service."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def write_private(path: Path, text: str) -> Path:
    """Write a file only its owner can read (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path


def _write_private_json(path: Path, data: dict) -> None:
    write_private(path, json.dumps(data, indent=2) + "\n")


def _new_credentials() -> dict[str, str]:
    return {
        "postgres_password": secrets.token_urlsafe(24),
        "s3_access_key": "mmguard" + secrets.token_hex(6),
        "s3_secret_key": secrets.token_urlsafe(30),
        "mlflow_admin_password": secrets.token_urlsafe(24),
        "mlflow_flask_secret": secrets.token_hex(32),
        "airflow_admin_password": secrets.token_urlsafe(24),
        "airflow_jwt_secret": secrets.token_hex(32),
        # Fernet wants 32 url-safe base64-encoded bytes.
        "airflow_fernet_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


@dataclass(frozen=True)
class StackState:
    project: Path

    @classmethod
    def of(cls, project: str | Path) -> "StackState":
        return cls(Path(project).resolve())

    @property
    def root(self) -> Path:
        return self.project / STATE_FOLDER

    def ensure_private_root(self) -> None:
        """The state folder holds secrets and logs: only its owner may list or read it."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # 0o711: Postgres's OS user must still traverse into it

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    def data_dir(self, service: str) -> Path:
        return self.root / service

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.root / "pids" / f"{service}.json"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    def credentials(self) -> dict[str, str]:
        """The stack's secrets, generated on first use into a 0600 file."""
        if self.credentials_file.exists():
            return json.loads(self.credentials_file.read_text())
        creds = _new_credentials()
        _write_private_json(self.credentials_file, creds)
        return creds

    def ports(self) -> dict[str, int]:
        """Ports picked at first start and kept; a kept port another process took since is
        replaced (only while its service is down, see `claim_ports`)."""
        if self.ports_file.exists():
            return json.loads(self.ports_file.read_text())
        return self.claim_ports(set(PORT_NAMES))

    def claim_ports(self, names: set[str]) -> dict[str, int]:
        current = json.loads(self.ports_file.read_text()) if self.ports_file.exists() else {}
        for name in PORT_NAMES:
            if name in names and (name not in current or not port_is_free(current[name])):
                current[name] = free_port(set(current.values()))
        _write_private_json(self.ports_file, current)
        return current
