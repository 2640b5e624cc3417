"""The stack's bookkeeping without starting a server: credentials, ports, pid files."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

from pipeline.stack import processes
from pipeline.stack.state import PORT_NAMES, StackState


def test_credentials_are_generated_once_and_private(tmp_path):
    state = StackState.of(tmp_path)
    first = state.credentials()
    assert oct(state.credentials_file.stat().st_mode & 0o777) == "0o600"
    assert len(set(first.values())) == len(first)  # no shared or default secret
    assert all(len(value) >= 16 for value in first.values())
    assert StackState.of(tmp_path).credentials() == first


def test_ports_are_distinct_kept_and_a_taken_one_is_replaced(tmp_path):
    state = StackState.of(tmp_path)
    ports = state.ports()
    assert set(ports) == set(PORT_NAMES) and len(set(ports.values())) == len(ports)
    assert StackState.of(tmp_path).ports() == ports
    with socket.socket() as holder:  # someone else takes the Postgres port meanwhile
        holder.bind(("127.0.0.1", ports["postgres"]))
        holder.listen()
        again = state.claim_ports(set(PORT_NAMES))
    assert again["postgres"] != ports["postgres"]
    assert {k: v for k, v in again.items() if k != "postgres"} == \
        {k: v for k, v in ports.items() if k != "postgres"}


def test_stop_kills_the_recorded_process_group(tmp_path):
    pid_file, log = tmp_path / "p.json", tmp_path / "p.log"
    # a parent with a child, as the Airflow processes have
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    pid = processes.start([sys.executable, "-c", script], {}, pid_file, log, tmp_path)
    assert processes.running_pid(pid_file) == pid
    assert processes.stop(pid_file)
    assert processes.running_pid(pid_file) is None and not pid_file.exists()
    leftover = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_stop_never_signals_a_process_it_did_not_start(tmp_path):
    """A pid file whose pid now belongs to another process (pid reuse) is left alone."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pid_file = tmp_path / "p.json"
        pid_file.write_text(json.dumps({"pid": stranger.pid, "started": 1.0, "command": []}))
        assert processes.running_pid(pid_file) is None
        assert not processes.stop(pid_file)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_connect_dvc_takes_keys_that_look_like_options(tmp_path):
    """token_urlsafe can start a secret with "-", which `dvc remote modify` read as a flag."""
    from pipeline.stack import control
    from pipeline.stack.services import BIN

    state = StackState.of(tmp_path / "stack")
    creds = state.credentials()
    creds["s3_secret_key"] = "-MBgvnLFJ4r7CBM760Ch4P3nNpM7fiBrXgJuvRsR"
    state.credentials_file.write_text(json.dumps(creds))
    clone = tmp_path / "clone"
    clone.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=clone, check=True)

    control.connect_dvc(state, clone)

    config = (clone / ".dvc" / "config.local").read_text()
    assert f"secret_access_key = {creds['s3_secret_key']}" in config
    assert f"endpointurl = http://127.0.0.1:{state.ports()['s3']}" in config
