"""What Airflow needs from the project: the DVC stage graph, the stage runner, the choice of
sources, incoming batches and their drift check, failure alerts and the local `mmguard run`."""
