"""One module per DVC stage, each exposing `run(params, paths) -> dict` of counts and metrics."""

STAGES = ("ingest", "dedupe", "validate", "shard", "train", "evaluate", "checks", "drift")
