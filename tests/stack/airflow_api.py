"""A small client of Airflow's REST API (v2), as an operator or CI would use it."""
from __future__ import annotations

import time

import requests

from pipeline.stack import services
from pipeline.stack.state import StackState

FINISHED = {"success", "failed"}


class AirflowApi:
    def __init__(self, state: StackState):
        self.base = services.airflow_url(state) + "/api/v2"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {services.airflow_token(state)}"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, self.base + path, timeout=60, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else {}

    def wait_for_dag(self, dag_id: str, timeout_s: float = 300) -> None:
        """The DAG processor has parsed the file and the DAG exists."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.session.get(f"{self.base}/dags/{dag_id}", timeout=30).status_code == 200:
                return
            time.sleep(3)
        raise AssertionError(f"DAG {dag_id} never appeared; import errors: "
                             f"{self._call('GET', '/importErrors')}")

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self._call("POST", f"/dags/{dag_id}/dagRuns",
                         json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                           params={"limit": 100})
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}

    def task_durations(self, dag_id: str, run_id: str) -> dict[str, float]:
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                           params={"limit": 100})
        done = [ti for ti in found["task_instances"] if ti.get("duration") is not None]
        return {ti["task_id"]: ti["duration"]
                for ti in sorted(done, key=lambda ti: ti.get("start_date") or "")}

    def wait(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in FINISHED:
                return state
            time.sleep(3)
        raise AssertionError(f"{dag_id} {run_id} still running after {timeout_s:.0f}s: "
                             f"{self.task_states(dag_id, run_id)}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log lines (the API serves it as JSON events, not plain text)."""
        response = self.session.get(
            f"{self.base}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
            f"{try_number}", params={"full_content": True}, timeout=60,
            headers={"Accept": "application/json"})
        response.raise_for_status()
        return "\n".join(str(event.get("event", "")) if isinstance(event, dict) else str(event)
                         for event in response.json()["content"])

    def upstream(self, dag_id: str, task_id: str) -> list[str]:
        tasks = self._call("GET", f"/dags/{dag_id}/tasks")["tasks"]
        return sorted(t["task_id"] for t in tasks if task_id in t["downstream_task_ids"])

    def pool_slots(self, pool: str) -> int:
        return self._call("GET", f"/pools/{pool}")["slots"]

    def set_pool_slots(self, pool: str, slots: int) -> None:
        # The mask is what default_pool requires (only its slots may change); the full body is
        # what the other pools require.
        self._call("PATCH", f"/pools/{pool}", params={"update_mask": "slots"},
                   json={"name": pool, "slots": slots, "include_deferred": False})

    def clear_failed(self, dag_id: str, run_id: str) -> None:
        """Re-run the failed tasks of a run and what follows them (the operator's retry)."""
        self._call("POST", f"/dags/{dag_id}/clearTaskInstances",
                   json={"dry_run": False, "dag_run_id": run_id, "only_failed": True,
                         "include_downstream": True, "reset_dag_runs": True})
