"""A failing task fires the failure notifier: by e-mail through the SMTP provider when the
connection is configured (a real SMTP server on 127.0.0.1 receives it), else as a log line."""
from __future__ import annotations

import textwrap

from tests.dags.airflow_child import REPO, run_child

FAILING_DAGS = textwrap.dedent('''
    from datetime import datetime, timezone
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
    from pipeline.orchestration.alerts import FailureAlert

    for dag_id, conn_id in (("fails_quietly", "smtp_absent"), ("fails_by_mail", "smtp_test")):
        with DAG(dag_id, schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc)):
            BashOperator(task_id="boom", bash_command="echo about to fail; exit 3", retries=0,
                         on_failure_callback=[FailureAlert(conn_id, ("ops@example.com",))])
''')

# A real SMTP server in the child (Python 3.11's smtpd), then both DAGs through dag.test().
RUN = textwrap.dedent('''
    import asyncore, json, os, smtpd, socket, sys, threading, warnings
    from pathlib import Path
    received = []

    class Server(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append({"from": mailfrom, "to": rcpttos, "data": data.decode()})

    server = Server(("127.0.0.1", int(sys.argv[1])), None)
    threading.Thread(target=asyncore.loop, kwargs={"timeout": 0.1}, daemon=True).start()

    from airflow.dag_processing.dagbag import BundleDagBag
    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
    states = {}
    for dag_id in ("fails_quietly", "fails_by_mail"):
        run = bag.get_dag(dag_id).test()
        states[dag_id] = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"states": states, "received": received,
                                  "errors": {k: v for k, v in bag.import_errors.items()}}))
''')


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failing_task_fires_the_notifier(tmp_path, migrated_db):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "failing.py").write_text(FAILING_DAGS)
    port = _free_port()
    result = run_child(RUN, REPO, tmp_path / "home", str(port), dags=dags, db=migrated_db,
                       extra_env={"AIRFLOW_CONN_SMTP_TEST": (
                           f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true"
                           "&from_email=mmguard@example.com")})
    assert result["errors"] == {}
    assert result["states"] == {"fails_quietly": {"boom": "failed"},
                                "fails_by_mail": {"boom": "failed"}}
    log = result["log"]
    # Without the connection: one clear line naming what is missing.
    assert "ALERT mmguard task failed: fails_quietly.boom" in log
    assert "no e-mail sent: no Airflow connection 'smtp_absent'" in log
    # With it: the SMTP provider delivered the alert.
    assert len(result["received"]) == 1, log[-3000:]
    mail = result["received"][0]
    assert mail["to"] == ["ops@example.com"]
    assert "mmguard task failed: fails_by_mail.boom" in mail["data"]
