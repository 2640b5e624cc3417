"""Serving: the registered champion answers real HTTP requests from `mlflow models serve`, holds
up against abusive requests, and `mmguard predict` scores a file, reporting bad rows instead of
crashing."""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from pipeline import registry, serving, tracking
from pipeline.cli import app
from pipeline.paths import Paths
from pipeline.params import parse_params
from pipeline.serving import BadInput, ServingLimits, decode_image
from tests.data import fixtures as fx
from tests.pipeline.registry_fixtures import (
    MLFLOW_BIN, free_port, install_candidate, model_dirs, project_params,
    quiet_env, start_server, stop_server, write_test_split,
)

TASK = "hateful_memes"
PROBS = ["prob_not_hateful", "prob_hateful"]


def png_bytes(colour=(200, 40, 40), side=48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A project whose registry holds one version, promoted to @champion."""
    root = tmp_path_factory.mktemp("serving")
    paths = Paths(root)
    dirs = model_dirs(root, TASK, {"good": 1})
    write_test_split(paths, TASK, oracle_dir=dirs["good"])
    params = project_params(root, TASK)
    install_candidate(paths, dirs["good"])
    registry.register(params, paths)
    assert registry.promote(params, paths).promoted
    return params, paths


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory):
    params, paths = champion
    port = free_port()
    uri = f"models:/{registry.model_name(params)}@champion"
    command = [str(MLFLOW_BIN), "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = quiet_env(MLFLOW_TRACKING_URI=params.registry.tracking_uri)
    process = start_server(command, f"http://127.0.0.1:{port}/ping",
                           tmp_path_factory.mktemp("logs") / "serve.log", env)
    yield f"http://127.0.0.1:{port}"
    stop_server(process)


LIMITS = ServingLimits.from_params(parse_params({}))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decode_image_takes_bytes_or_base64_never_a_path(tmp_path):
    data = png_bytes()
    assert decode_image(b64(data), LIMITS).size == (48, 48)
    assert decode_image(data, LIMITS).mode == "RGB"
    (tmp_path / "a.png").write_bytes(data)
    with pytest.raises(BadInput, match="paths are not accepted"):
        decode_image(str(tmp_path / "a.png"), LIMITS)  # exists, and is still not read
    with pytest.raises(BadInput, match="paths are not accepted"):
        decode_image("not base64 !!", LIMITS)
    with pytest.raises(BadInput, match="corrupt_image"):
        decode_image(b64(data[:30]), LIMITS)  # truncated PNG
    with pytest.raises(BadInput, match="must be base64"):
        decode_image(None, LIMITS)


def test_decode_image_applies_ingests_limits():
    with pytest.raises(BadInput, match="decompression_bomb"):
        decode_image(b64(fx.huge_header_png(50_000, 50_000)), LIMITS)
    with pytest.raises(BadInput, match="image_too_small"):
        decode_image(b64(png_bytes(side=8)), LIMITS)
    small = ServingLimits(**{**LIMITS.__dict__, "max_image_bytes": 1024})
    with pytest.raises(BadInput, match="max_image_bytes"):
        decode_image(b64(fx.png_bytes(1, (256, 256))), small)
    # converted the way ingest converts: alpha on white, as the model saw it in training
    rgba = decode_image(b64(fx.rgba_png_bytes(alpha=0)), LIMITS)
    assert rgba.getpixel((0, 0)) == (255, 255, 255)


def test_bad_input_keeps_its_one_line_message():
    # The scoring server prefixes the whole input frame to the message; ours stays.
    error = BadInput("row 3: image rejected\n(corrupt_image)")
    error.message = "Failed to predict data '<a huge frame>'. \nError: row 3"
    assert error.message == "row 3: image rejected (corrupt_image)"
    assert json.loads(error.serialize_as_json())["message"] == error.message


def test_threads_sharing_the_loaded_model_get_single_thread_answers(champion):
    """MLflow's scoring server runs requests in threads over one loaded model: no call may
    switch the model's mode under another."""
    params, _ = champion
    with tracking.using_uri(params.registry.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{registry.model_name(params)}@champion")
    frame = pd.DataFrame({"image": [b64(fx.png_bytes(seed)) for seed in range(16)],
                          "text": [f"caption {seed}" for seed in range(16)]})
    single = model.predict(frame)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: model.predict(frame), range(16)))
    for answer in answers:
        pd.testing.assert_frame_equal(answer, single, check_exact=True)


def test_limits_travel_in_the_model_config():
    params = parse_params({"serving": {"max_rows": 7}, "ingest": {"max_text_chars": 50}})
    limits = serving.limits_from_config(serving.model_config(params))
    assert limits.max_rows == 7 and limits.max_text_chars == 50
    assert serving.limits_from_config(None) == LIMITS
    with pytest.raises(BadInput, match="serving.max_rows = 7"):
        serving.check_request(pd.DataFrame({"image": ["x"] * 8, "text": ["t"] * 8}), limits)


@pytest.mark.slow
def test_served_champion_answers_invocations(served, champion):
    params, _ = champion
    images = [base64.b64encode(png_bytes(c)).decode() for c in ((200, 40, 40), (10, 90, 250))]
    payload = {"dataframe_split": {"columns": ["image", "text"],
                                   "data": [[images[0], "a harmless caption"],
                                            [images[1], "another caption entirely"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    predictions = pd.DataFrame(response.json()["predictions"])
    assert list(predictions.columns) == ["label", "label_index", *PROBS, "model_version",
                                         "decision"]
    assert set(predictions["label"]) <= {"not_hateful", "hateful"}
    np.testing.assert_allclose(predictions[PROBS].sum(axis=1), 1.0, atol=1e-5)

    # the HTTP answer is the registered model's answer
    with tracking.store(params):
        local = mlflow.pyfunc.load_model(f"models:/{registry.model_name(params)}@champion")
    expected = local.predict(pd.DataFrame(payload["dataframe_split"]["data"],
                                          columns=["image", "text"]))
    np.testing.assert_allclose(predictions[PROBS].to_numpy(), expected[PROBS].to_numpy(),
                               atol=1e-5)


@pytest.mark.slow
def test_served_model_rejects_a_bad_image_with_a_clear_400(served):
    payload = {"dataframe_split": {"columns": ["image", "text"], "data": [["@@@", "text"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=60)
    assert response.status_code == 400
    assert "row 0" in response.text and "base64" in response.text


def frame_payload(rows: list[list]) -> dict:
    return {"dataframe_split": {"columns": ["image", "text"], "data": rows}}


def assert_one_line_4xx(response: requests.Response, *fragments: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert len(response.content) < 2000 and "Traceback" not in response.text
    body = response.json() if response.headers.get("content-type", "").startswith(
        "application/json") else {"message": response.text}
    message = body["message"]
    assert "\n" not in message.strip(), message
    assert "stack_trace" not in body
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.slow
def test_served_model_survives_abuse(served, tmp_path):
    good = frame_payload([[b64(png_bytes()), "a harmless caption"]])
    post = lambda body, **kw: requests.post(f"{served}/invocations", timeout=120,  # noqa: E731
                                            **({"json": body} if kw == {} else kw))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    # paths: an existing server-side file and /etc/passwd are never read
    for path in (str(secret), "/etc/passwd", "../../../../etc/passwd", "/dev/zero"):
        assert_one_line_4xx(post(frame_payload([[path, "text"]])), "row 0")
    # one 50 MB base64 image, a bomb, 10,000 rows, a text over the cap
    assert_one_line_4xx(post(frame_payload([["A" * 50_000_000, "text"]])),
                        "serving.max_request_bytes")
    assert_one_line_4xx(post(frame_payload([[b64(fx.huge_header_png(50_000, 50_000)), "t"]])),
                        "decompression_bomb")
    assert_one_line_4xx(post(frame_payload([[b64(png_bytes()), "t"]] * 10_000)),
                        "serving.max_rows")
    assert_one_line_4xx(post(frame_payload([[b64(png_bytes()), "x" * 5000]])),
                        "ingest.max_text_chars")
    # malformed JSON, wrong types, a wrong shape, a bad batch size
    headers = {"Content-Type": "application/json"}
    for body in (b'{"dataframe_split": {"columns": ["image", "text"], "data": [[',
                 b"\xff\xfe not json", b"[]", b'{"dataframe_split": 7}'):
        response = post(None, data=body, headers=headers)
        assert 400 <= response.status_code < 500 and "Traceback" not in response.text
    for row in ([12345, "text"], [b64(png_bytes()), 7], [None, None], [["nested"], {"a": 1}]):
        response = post(frame_payload([row]))
        assert 400 <= response.status_code < 500, (row, response.text[:300])
        assert "Traceback" not in response.text and "stack_trace" not in response.text
    assert_one_line_4xx(post({**good, "params": {"batch_size": 10**9}}), "batch_size")
    # still up, and the next good request is answered
    assert requests.get(f"{served}/ping", timeout=10).status_code == 200
    response = post(good)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["predictions"][0]["label"] in ("not_hateful", "hateful")


@pytest.mark.slow
def test_concurrent_clients_get_byte_identical_predictions(served):
    rows = [[b64(fx.png_bytes(seed, (64, 64))), f"caption number {seed}"] for seed in range(8)]
    payload = frame_payload(rows)
    single = requests.post(f"{served}/invocations", json=payload, timeout=120)
    assert single.status_code == 200, single.text[:500]

    def client(_: int) -> list[bytes]:
        return [requests.post(f"{served}/invocations", json=payload, timeout=300).content
                for _ in range(3)]

    with ThreadPoolExecutor(16) as pool:
        answers = [body for bodies in pool.map(client, range(16)) for body in bodies]
    assert len(answers) == 48
    assert all(body == single.content for body in answers)


def test_predict_cli_scores_good_rows_and_reports_bad_ones(champion, tmp_path):
    params, paths = champion
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(png_bytes())
    (tmp_path / "img" / "blue.png").write_bytes(png_bytes((0, 0, 255)))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    lines = [json.dumps({"id": "a", "image": "img/red.png", "text": "first"}),
             json.dumps({"id": "b", "image": "img/missing.png", "text": "no such file"}),
             '{"id": "c", "image": "img/red.png", "text": ',  # malformed JSON
             json.dumps({"id": "d", "image": "img/broken.png", "text": "corrupt image"}),
             json.dumps({"id": "e", "image": "img/blue.png"}),  # no text
             json.dumps({"id": "f", "img": None, "text": "no image"}),
             json.dumps({"id": "g", "image": "img/blue.png", "text": "last"}),
             json.dumps({"id": "h", "image": "../outside.png", "text": "escapes"}),
             json.dumps({"id": "i", "image": "img/link.png", "text": "symlink out"})]
    (tmp_path.parent / "outside.png").write_bytes(png_bytes())
    (tmp_path / "img" / "link.png").symlink_to(tmp_path.parent / "outside.png")
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join(lines) + "\n")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    output = tmp_path / "out" / "predictions.parquet"

    result = CliRunner().invoke(app, [
        "predict", "--model", f"models:/{registry.model_name(params)}@champion",
        "--input", str(source), "--output", str(output), "--batch-size", "4",
        "--params", str(params_file), "--root", str(paths.root)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["rows"] == 9 and summary["scored"] == 2 and summary["bad"] == 7

    frame = pd.read_parquet(output).set_index("id", drop=False)
    assert len(frame) == 9  # every input row comes out once
    assert frame.loc["a", "error"] is None and frame.loc["g", "error"] is None
    assert frame.loc[["a", "g"], PROBS].notna().all().all()
    assert frame.loc["a", "label"] in ("not_hateful", "hateful")
    errors = frame["error"].fillna("")
    assert "corrupt_image" in errors["d"] and "missing_text" in errors["e"]
    assert "missing_image" in errors["f"] and errors["b"].startswith("missing_image")
    assert errors["h"].startswith("path_outside_dataset")
    assert errors["i"].startswith("path_outside_dataset")
    assert str(tmp_path.parent) not in errors["i"]  # where the symlink led is not echoed
    assert errors["b"] != "" and frame.loc[["b", "d", "e", "f"], PROBS].isna().all().all()
    assert frame["error"].str.startswith("malformed_line 3").sum() == 1


def test_predict_cli_refuses_unknown_formats(champion, tmp_path):
    params, paths = champion
    (tmp_path / "rows.csv").write_text("image,text\n")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    result = CliRunner().invoke(app, ["predict", "--model", "models:/x@champion", "--input",
                                      str(tmp_path / "rows.csv"), "--output",
                                      str(tmp_path / "out.parquet"), "--params",
                                      str(params_file), "--root", str(paths.root)])
    assert result.exit_code == 2 and "expected a .jsonl or .parquet file" in result.output
