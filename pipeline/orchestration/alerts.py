"""Failure alerts for every mmguard task: an Airflow Notifier used as `on_failure_callback`.

With the configured SMTP connection present (`airflow.smtp_conn_id`, default `smtp_default`) and
recipients set (`airflow.alert_to`), the SMTP provider's notifier sends the e-mail. Otherwise one
clear line goes to the task log, so a failure is never silent and a missing set-up is named.
"""
from __future__ import annotations

import logging

from airflow.sdk import BaseHook, BaseNotifier

log = logging.getLogger("mmguard.alerts")


def _connection_exists(conn_id: str) -> bool:
    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no way to reach the connection store
        return False
    return True


class FailureAlert(BaseNotifier):
    template_fields = ()

    def __init__(self, smtp_conn_id: str = "smtp_default", to: tuple[str, ...] = ()):
        super().__init__()
        self.smtp_conn_id = smtp_conn_id
        self.to = tuple(to)

    @staticmethod
    def describe(context) -> str:
        ti = context["ti"]
        return (f"mmguard task failed: {ti.dag_id}.{ti.task_id} (run {ti.run_id}, try "
                f"{ti.try_number}): {context.get('exception')!r}")

    def notify(self, context) -> None:
        message = self.describe(context)
        if self.to and _connection_exists(self.smtp_conn_id):
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(to=list(self.to), smtp_conn_id=self.smtp_conn_id,
                         subject=message[:200], html_content=f"<pre>{message}</pre>"
                         ).notify(context)
            log.error("ALERT e-mailed to %s via %s: %s", ", ".join(self.to), self.smtp_conn_id,
                      message)
            return
        missing = ("no recipients in params airflow.alert_to" if not self.to else
                   f"no Airflow connection {self.smtp_conn_id!r}")
        log.error("ALERT %s (no e-mail sent: %s)", message, missing)
