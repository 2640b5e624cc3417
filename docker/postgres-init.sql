-- The MLflow tracking and registry store lives next to Airflow's metadata DB, in its own database.
CREATE DATABASE mlflow OWNER mmguard;
