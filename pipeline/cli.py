"""The `mmguard` command: one subcommand per stage and per operation. Parse, call, print."""
from __future__ import annotations

import json
import sys
from pathlib import Path
import typer

from pipeline.errors import StageFailed
from pipeline.params import ParamsError, load_params
from pipeline.paths import Paths

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, check, register and monitor multimodal moderation classifiers.")

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read")
ROOT_OPTION = typer.Option(Path("."), "--root", help="project root holding data/ and artifacts/")


def _print(result: object) -> None:
    if result is not None:
        typer.echo(json.dumps(result, indent=2, default=str))


def _load(params_path: Path):
    try:
        return load_params(params_path)
    except ParamsError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def _run_stage(stage: str, run, params_path: Path, root: Path) -> None:
    params = _load(params_path)
    try:
        result = run(params, Paths(root))
    except StageFailed as exc:
        typer.secho(f"{stage} failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    _print(result)


def _stage_run(stage: str):
    """`run` of the stage's module, imported when its command runs (`mmguard checks` must not
    load torch); the imports are spelled out so readers and tools see the call graph."""
    if stage == "ingest":
        from pipeline.stages.ingest import run
    elif stage == "dedupe":
        from pipeline.stages.dedupe import run
    elif stage == "validate":
        from pipeline.stages.validate import run
    elif stage == "shard":
        from pipeline.stages.shard import run
    elif stage == "embed":
        from pipeline.stages.embed import run
    elif stage == "train":
        from pipeline.stages.train import run
    elif stage == "evaluate":
        from pipeline.stages.evaluate import run
    elif stage == "checks":
        from pipeline.stages.checks import run
    elif stage == "text_peer":
        from pipeline.stages.text_peer import run
    else:
        raise ValueError(f"no stage {stage!r}")
    return run


def _stage_command(stage: str, doc: str) -> None:
    def command(params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
        _run_stage(stage, _stage_run(stage), params, root)

    command.__doc__ = doc
    app.command(name=stage)(command)


for _stage, _doc in (
    ("ingest", "Normalise data/ into the canonical manifest, image store and quarantine."),
    ("dedupe", "Drop exact and near duplicates, quarantine conflicting labels, stop split leaks."),
    ("validate", "Run the Great Expectations suite over the manifest and its images."),
    ("shard", "Write WebDataset tar shards per split (per class for train)."),
    ("embed", "Run frozen pretrained towers once over every item (the embedding cache)."),
    ("train", "Train the CLIP + LoRA + fusion-head model and track it in MLflow."),
    ("evaluate", "Score the model on the test split; metrics, predictions and plots."),
    ("checks", "Check the predictions; fail on any error-level check."),
    ("text_peer", "Train the TF-IDF text-only peer; score it beside the model on its test rows."),
):
    _stage_command(_stage, _doc)


@app.command(name="stage-deps", hidden=True)
def stage_deps_command(dvc_yaml: Path = typer.Option(Path("dvc.yaml"), "--dvc-yaml")) -> None:
    """Rewrite dvc.yaml's code deps (each stage's import closure) and its speed-knob-free params."""
    from pipeline import stage_deps

    changed = stage_deps.rewrite(dvc_yaml)
    typer.echo(f"rewrote {', '.join(changed)}" if changed else "dvc.yaml is up to date")


@app.command()
def drift(reference: Path = typer.Option(None, "--reference", help="manifest to compare against "
                                         "(default: drift.reference_split of the clean manifest; "
                                         "with --since, the champion's training reference)"),
          current: Path = typer.Option(None, "--current", help="manifest to judge (default: "
                                       "drift.current_split of the clean manifest)"),
          since: str = typer.Option(None, "--since", help="judge the traffic the served model "
                                    "captured in this window instead, e.g. 24h, 30m, 7d"),
          out: Path = typer.Option(None, "--out", help="folder for the reports (default "
                                   "artifacts/drift)"),
          params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Evidently drift of current against reference data, as the monitored model sees it.
    With no options: the DVC stage. Exit 0 whatever the verdict; read drift.json."""
    from pipeline.stages import drift as stage

    loaded = _load(params)
    try:
        result = stage.run(loaded, Paths(root), reference, current, out, since)
    except StageFailed as exc:
        typer.secho(f"drift failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if result.get("dropped_rows"):
        typer.secho(f"the capture writer dropped {result['dropped_rows']} rows in this window "
                    "(it fell behind); they are not in the comparison", fg="yellow", err=True)
    _print(result)


@app.command()
def fetch(source: str = typer.Option(..., "--source", help="synthetic, hateful_memes, mmhs150k, "
                                     "fakeddit or coco"),
          params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Land a source's raw files under data/<source>/ (then `dvc add data`)."""
    from pipeline.sources import get_source

    loaded = _load(params)
    try:
        module = get_source(source)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    dest = Paths(root).source_dir(source)
    try:
        module.fetch(dest, loaded)
    except (StageFailed, ValueError, FileNotFoundError) as exc:
        typer.secho(f"fetch {source} failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"fetched {source} into {dest}")


@app.command()
def run(params: Path = PARAMS_OPTION) -> None:
    """The main job through Airflow: the retrain DAG once (`dag.test()`, SQLite metadata DB in
    airflow_home/), then each task's state and duration, the gate decision and where to look."""
    from pipeline.orchestration import local_airflow

    _load(params)  # a bad params.yaml stops here, before Airflow starts
    raise typer.Exit(local_airflow.run_retrain(Path(".").resolve()))


@app.command()
def stage(name: str = typer.Argument(..., help="a stage of dvc.yaml")) -> None:
    """Run one DVC stage alone (what each retrain-DAG task does): with a default DVC remote, pull
    its inputs, `dvc repro --single-item NAME`, push its outputs; without one, or with
    MMGUARD_ONE_WORKSPACE=1 (`mmguard run`), just the repro."""
    from pipeline.orchestration.stage_runner import DvcFailed, run_stage

    try:
        run_stage(name)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    except DvcFailed as exc:
        typer.secho(f"stage {name} failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def land(sources: list[str] = typer.Argument(None, help="sources to use (none: params.yaml's "
                                             "ingest.sources)"),
         params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Pick the sources ingest reads (sets params.yaml ingest.sources, as `dvc exp run -S` would;
    batches in data/incoming/ always join) and fetch each of them."""
    from pipeline.orchestration.sources import land as land_sources

    try:
        chosen = land_sources(list(sources or []), params, root)
    except (StageFailed, ValueError, FileNotFoundError) as exc:
        typer.secho(f"land failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"sources": chosen}))


monitor_app = typer.Typer(no_args_is_help=True, help="The drift monitor's steps.")
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("incoming")
def monitor_incoming(params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Check each new batch in data/incoming/ for drift against the champion's training data;
    the last line printed is the JSON result {"batches": {...}, "drifted": [...]}."""
    from pipeline.orchestration import incoming

    try:
        result = incoming.check_new_batches(_load(params), Paths(root), params)
    except StageFailed as exc:
        typer.secho(f"drift monitor failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result))


@monitor_app.command("reference")
def monitor_reference(params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Snapshot the clean manifest's reference split as the champion's drift reference."""
    from pipeline.orchestration import incoming

    try:
        incoming.save_reference(_load(params), Paths(root))
    except StageFailed as exc:
        typer.secho(f"drift reference failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


ALLOW_ROLLED_BACK = typer.Option(False, "--allow-rolled-back",
                                 help="consider a version that was rolled back")


@app.command()
def register(params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Register artifacts/model (idempotent on its content hash), alias @challenger; prints
    {"version": "N", "created": bool}."""
    from pipeline import registry

    result = _registry_call(lambda: registry.register(_load(params), Paths(root), params))
    typer.echo(json.dumps(result))


@app.command()
def gate(out: Path = typer.Option(..., "--out", help="JSON file for the decision"),
         allow_rolled_back: bool = ALLOW_ROLLED_BACK,
         params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Score @challenger against @champion and write the decision (promote|keep); moves nothing.
    Exits 0 whenever the gate ran, 1 only on registry errors."""
    from pipeline import registry

    decision = _registry_call(lambda: registry.gate(_load(params), Paths(root),
                                                    allow_rolled_back))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")


@app.command()
def promote(decision: Path = typer.Option(None, "--decision", help="a `gate --out` file to "
                                          "apply; without it the gate runs first"),
            allow_rolled_back: bool = ALLOW_ROLLED_BACK,
            params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Move @champion to the challenger with compare-and-set: refuse (exit 1) when @champion is
    no longer the version the gate saw. Without --decision, also exit 1 when the gate says keep."""
    from pipeline import registry

    loaded, paths = _load(params), Paths(root)
    if decision is None:
        gated = _registry_call(lambda: registry.promote(loaded, paths, allow_rolled_back))
        if not gated.promoted:
            raise typer.Exit(1)
        return
    try:
        read = registry.GateDecision.from_dict(json.loads(decision.read_text()))
    except (OSError, ValueError) as exc:
        typer.secho(f"cannot read the gate decision {decision}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    _print(_registry_call(lambda: registry.apply_decision(loaded, paths, read,
                                                          allow_rolled_back)))


WHO_OPTION = typer.Option(None, "--who", help="who moves the alias, for its history "
                          "(default: $MMGUARD_WHO, else user@host)")


@app.command()
def rollback(why: str = typer.Option("", "--why", help="why, for the alias history"),
             who: str = WHO_OPTION,
             params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Point @champion back at @previous_champion; the demoted version is marked rolled back."""
    from pipeline import registry

    _print(_registry_call(lambda: registry.rollback(_load(params), Paths(root), why, who)))


alias_app = typer.Typer(no_args_is_help=True, help="Move a registry alias by hand.")
app.add_typer(alias_app, name="alias")


@alias_app.command("set")
def alias_set(alias: str = typer.Argument(..., help="champion or challenger"),
              version: str = typer.Argument(..., help="registered version number"),
              why: str = typer.Option(..., "--why", help="why it moves (kept in the history)"),
              who: str = WHO_OPTION,
              params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Point @ALIAS at VERSION without the gate, recorded in the alias history. Only that alias
    moves: `rollback` still returns to @previous_champion."""
    from pipeline.registry import history

    _print(_registry_call(lambda: history.set_alias(_load(params), root, alias, version, why,
                                                    who)))


@app.command(name="history")
def alias_history(alias: str = typer.Option(None, "--alias", help="only this alias's moves"),
                  as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
                  params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Every recorded move of @champion and @challenger, oldest first: when, who, from, to,
    action (register, promote, rollback, manual) and why."""
    from pipeline.registry import history

    events = _registry_call(lambda: history.read(_load(params), root, alias))
    typer.echo(json.dumps(events, indent=2) if as_json else history.format_table(events))


@app.command(name="shadow-report")
def shadow_report(since: str = typer.Option("24h", "--since", help="window of captured "
                                            "traffic, e.g. 24h, 30m, 7d"),
                  params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """How the shadow alias (serving.shadow) would have answered the served traffic: agreement,
    score shift (mean, p95) and the rows it labels differently, from the capture log."""
    from pipeline.monitoring import shadow

    try:
        _print(shadow.report(_load(params), root, since))
    except StageFailed as exc:
        typer.secho(f"shadow-report failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


review_app = typer.Typer(no_args_is_help=True, help="The human review loop: queue captured "
                         "rows for Label Studio, import the labels, purge traffic.")
app.add_typer(review_app, name="review")


def _review_call(what: str, call):
    """A review command's result as JSON; a clear error exits 1."""
    try:
        _print(call())
    except StageFailed as exc:
        typer.secho(f"review {what} failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@review_app.command("queue")
def review_queue(since: str = typer.Option("24h", "--since", help="window of captured traffic, "
                                           "e.g. 24h, 30m, 7d"),
                 params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Pick captured rows for review (shadow disagreements, rows near the served threshold, a
    random QC sample; params.yaml `review`) into data/review/queued/<batch>/: Label Studio
    tasks.json + label_config.xml, images, manifest.jsonl, stats.json."""
    from pipeline.review import queue

    _review_call("queue", lambda: queue.build_queue(_load(params), root, since))


@review_app.command("import")
def review_import(exports: list[Path] = typer.Argument(None, help="Label Studio JSON exports "
                                                       "(none: every file in "
                                                       "data/review/returned/, moved to "
                                                       "data/review/done/ once imported)"),
                  params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Validate reviewed labels and write them as a batch in data/incoming/ (jsonl layout);
    bad tasks go to data/review/imports/<name>/quarantine.jsonl with their reason."""
    from pipeline.review import importer

    loaded = _load(params)
    _review_call("import", lambda: [importer.import_export(loaded, root, e) for e in exports]
                 if exports else importer.import_returned(loaded, root))


@review_app.command("purge")
def review_purge(older_than: int = typer.Option(None, "--older-than", min=1, help="days "
                                                "(default monitoring.retention_days)"),
                 image_sha256: str = typer.Option(None, "--image-sha256", help="take down "
                                                  "every copy of this image"),
                 params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Remove captured traffic and every review copy made of it: by age, or by image hash (a
    takedown). Prints what was removed per place and what was not, and why."""
    from pipeline.review import purge

    loaded = _load(params)
    if image_sha256 is not None and older_than is not None:
        typer.secho("give --older-than or --image-sha256, not both", fg="red", err=True)
        raise typer.Exit(2)
    _review_call("purge", lambda: purge.purge_image(loaded, root, image_sha256)
                 if image_sha256 is not None else purge.purge_older_than(loaded, root,
                                                                          older_than))


@app.command()
def checkout(version: str = typer.Option(..., "--version", help="registered version number"),
             params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Restore a version's dvc.lock, data.dvc, params.yaml and let DVC restore its data,
    artifacts and model (`dvc pull` with a default remote, else `dvc checkout`). No git."""
    from pipeline import registry

    _print(_registry_call(lambda: registry.checkout(_load(params), Paths(root), version)))


@app.command()
def predict(model: str = typer.Option(..., "--model", help="model URI, e.g. "
                                      "models:/mmguard-hateful_memes@champion"),
            input_file: Path = typer.Option(..., "--input", help=".jsonl or .parquet of image, text"),
            output_file: Path = typer.Option(..., "--output", help=".parquet or .jsonl to write"),
            batch_size: int = typer.Option(64, "--batch-size", min=1),
            images_dir: Path | None = typer.Option(
                None, "--images-dir", help="folder every image path must lie in (default: the "
                "input file's folder)"),
            params: Path = PARAMS_OPTION, root: Path = ROOT_OPTION) -> None:
    """Batch inference over a file; bad rows are reported in the output, not fatal."""
    from pipeline import tracking
    from pipeline.predict import PredictError, predict_file, serving_overrides

    loaded = _load(params)
    folder = images_dir if images_dir is not None else input_file.resolve().parent
    try:
        with tracking.store(loaded, root):  # models:/ URIs resolve in the project's registry
            _print(predict_file(model, input_file, output_file, folder,
                                loaded.ingest.max_image_bytes, batch_size,
                                serving_overrides(loaded, model)))
    except PredictError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def _registry_call(call):
    """Registry errors (server down, nothing to promote) print as one line and exit 1."""
    from pipeline.registry import RegistryError

    try:
        return call()
    except RegistryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


# ---- the production stack on this machine (pipeline/stack) ----------------------------------

stack_app = typer.Typer(no_args_is_help=True, help="Postgres, S3, MLflow server and Airflow's "
                        "processes on this machine, all on 127.0.0.1 (state in .stack/).")
app.add_typer(stack_app, name="stack")


def _stack_call(call):
    from pipeline.stack.processes import StackError

    try:
        return call()
    except StackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


def _stack_state(root: Path):
    from pipeline.stack.state import StackState

    return StackState.of(root)


@stack_app.command("up")
def stack_up(root: Path = ROOT_OPTION) -> None:
    """Start what is not running; credentials and ports are made on first start."""
    from pipeline.stack import control

    state = _stack_state(root)
    timings = _stack_call(lambda: control.up(state))
    for name, seconds in timings.items():
        typer.echo(f"{name:24s} {seconds:6.1f}s")
    _print_status(control.status(state))
    typer.echo(f"credentials: {state.credentials_file}")


@stack_app.command("down")
def stack_down(root: Path = ROOT_OPTION) -> None:
    """Stop what `up` started; data, ports and credentials stay for the next `up`."""
    from pipeline.stack import control

    stopped = _stack_call(lambda: control.down(_stack_state(root)))
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack_app.command("stop")
def stack_stop(service: str = typer.Argument(..., help="one service, e.g. mlflow"),
               root: Path = ROOT_OPTION) -> None:
    """Stop one service (`up` starts it again)."""
    from pipeline.stack import control

    stopped = _stack_call(lambda: control.stop_service(_stack_state(root), service))
    typer.echo(f"{service}: {'stopped' if stopped else 'was not running'}")


@stack_app.command("status")
def stack_status(root: Path = ROOT_OPTION) -> None:
    """Each service's URL, pid and health; exit 1 when any is unhealthy."""
    from pipeline.stack import control

    rows = control.status(_stack_state(root))
    _print_status(rows)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


def _print_status(rows) -> None:
    for row in rows:
        health = "healthy" if row.healthy else ("UNHEALTHY" if row.pid else "down")
        typer.echo(f"{row.name:24s} {health:10s} pid {str(row.pid or '-'):8s} {row.url}")


@stack_app.command("env")
def stack_env(root: Path = ROOT_OPTION) -> None:
    """Shell `export` lines a client needs (MLflow URL and login, S3 keys)."""
    import shlex

    from pipeline.stack.services import client_env

    for key, value in client_env(_stack_state(root)).items():
        typer.echo(f"export {key}={shlex.quote(value)}")


@stack_app.command("connect")
def stack_connect(clone: Path = typer.Argument(..., help="a checkout of this project"),
                  root: Path = ROOT_OPTION) -> None:
    """Make the stack's S3 bucket the default DVC remote of another checkout."""
    from pipeline.stack import control

    _stack_call(lambda: control.connect_dvc(_stack_state(root), clone.resolve()))
    typer.echo(f"{clone}: DVC remote '{control.DVC_REMOTE}' is the default")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
