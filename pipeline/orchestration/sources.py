"""One switch picks the data: the sources the retrain DAG's `source` param names are what fetch
lands AND what ingest reads.

Ingest reads `ingest.sources` from params.yaml, and dvc.yaml declares that section as a param of
the ingest stage, so the choice is written there (the way `dvc exp run -S` sets a param: in the
workspace, comments and order kept, never committed). DVC then sees the change and re-runs ingest.
Batches under data/incoming/ always join the sources: the drift monitor has already looked at
them, and a retrain it triggers must train on them.
"""
from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from pipeline.params import load_params
from pipeline.paths import Paths
from pipeline.sources import get_source, incoming


def choose(requested: list[str], params_path: Path, root: Path) -> list[str]:
    """`requested`, or params.yaml's own choice when empty, plus `incoming` when batches wait."""
    sources = list(dict.fromkeys(requested)) or list(load_params(params_path).ingest.sources)
    for name in sources:
        get_source(name)  # an unknown name stops here, before anything is written
    if incoming.batches(Paths(root).source_dir(incoming.SOURCE)) and \
            incoming.SOURCE not in sources:
        sources.append(incoming.SOURCE)
    return sources


def write_ingest_sources(params_path: Path, sources: list[str]) -> bool:
    """Set `ingest.sources` in params.yaml; True when it changed."""
    yaml = YAML()  # round-trip: the rest of the file stays as the user wrote it
    yaml.preserve_quotes = True
    yaml.representer.add_representer(  # keep `null` spelled out, as in the committed file
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = yaml.load(params_path.read_text())
    if list(data["ingest"]["sources"]) == sources:
        return False
    data["ingest"]["sources"] = sources
    with params_path.open("w") as handle:
        yaml.dump(data, handle)
    load_params(params_path)  # the file must still be valid
    return True


def land(requested: list[str], params_path: Path = Path("params.yaml"),
         root: Path = Path(".")) -> list[str]:
    """Choose the sources, make ingest read exactly them, and fetch each into data/<source>/."""
    sources = choose(requested, params_path, root)
    if write_ingest_sources(params_path, sources):
        print(f"params.yaml ingest.sources := {sources} (ingest will re-run)", flush=True)
    else:
        print(f"ingest.sources already {sources}", flush=True)
    params = load_params(params_path)
    for name in sources:
        dest = Paths(root).source_dir(name)
        print(f"fetching {name} into {dest}", flush=True)
        get_source(name).fetch(dest, params)
    return sources
