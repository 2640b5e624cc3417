from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_committed_params_yaml_is_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    # Every key of the model appears in params.yaml, so the file documents all settings.
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().model_dump(by_alias=True, mode="json")
    assert set(on_disk) == set(defaults)
    for section, values in defaults.items():
        if isinstance(values, dict):
            assert set(on_disk[section]) == set(values), section
    assert params.task in ("hateful_memes", "moderation7")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"task": "memes"}, "task: Input should be 'hateful_memes' or 'moderation7'"),
        ({"train": {"amp": "fp8"}}, "train.amp: Input should be 'auto', 'bf16', 'fp16' or 'off'"),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
        ({"shard": {"jpeg_quality": "high"}}, "shard.jpeg_quality: Input should be a valid integer"),
        ({"trian": {}}, "trian: unknown key"),
        ({"validate": {"min_rows": 3}}, "validate.min_rows: unknown key"),
        ({"synthetic": {"splits": {"train": 0.9, "val": 0.2, "test": 0.1}}}, "must sum to 1"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(raw, expected):
    with pytest.raises(ParamsError) as excinfo:
        parse_params(raw)
    assert expected in str(excinfo.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(scalar)


def test_validate_section_reads_through_its_alias():
    params = parse_params({"validate": {"min_rows_per_split": 3}})
    assert params.validate_.min_rows_per_split == 3
