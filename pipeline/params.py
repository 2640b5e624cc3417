"""Typed view of params.yaml: the single source of configuration.

Every stage reads its section through `load_params()`. Unknown keys and bad values stop the run
with a message that names the key and what is allowed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      model_validator)

Task = Literal["hateful_memes", "moderation7"]
Split = Literal["train", "val", "test"]
SourceName = Literal["synthetic", "hateful_memes", "mmhs150k", "fakeddit", "coco", "incoming"]


def _switch_from_yaml(value: object) -> object:
    # YAML 1.1 (PyYAML, `dvc exp run -S`) reads a bare on/off as true/false
    return ("on" if value else "off") if isinstance(value, bool) else value


# A speed-up switch: `auto` turns it on when training runs on CUDA and off on CPU.
Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch_from_yaml)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.4f}")
        return self


class SyntheticShift(Section):
    """Knobs that move the synthetic data away from the default, to measure drift detection.
    All off by default (the embedded data stays byte-identical); image sizes shift through
    `image_min_side` / `image_max_side`."""

    novel_shapes: bool = False  # other subject shapes, same colours, sizes and positions
    novel_vocabulary: bool = False  # captions name other groups and objects
    caption_style: Literal["plain", "hashtags"] = "plain"  # hashtags: "#every #word"


class SyntheticParams(Section):
    """The embedded default dataset; see pipeline/sources/synthetic/ for how labels arise."""

    seed: int = 0
    items_per_task: int = Field(2400, ge=60)  # clean items; planted defects come on top
    image_min_side: int = Field(96, ge=32)
    image_max_side: int = Field(224, ge=32)
    label_noise: float = Field(0.0, ge=0, le=0.5)
    # Share of hateful_memes items that are plain benign (neither modality hateful); 0 keeps an
    # ideal unimodal model at about 0.75 AUROC.
    benign_fraction: float = Field(0.0, ge=0, le=0.5)
    splits: SplitFractions = SplitFractions()
    # Defects planted on purpose, listed in data/synthetic/<task>/planted.json (broken files
    # cycle: truncated PNG, zero-byte file, text named .png, line pointing at no file).
    plant_exact_duplicates: int = Field(4, ge=0)
    plant_near_duplicates: int = Field(4, ge=0)
    plant_broken: int = Field(4, ge=0)
    shift: SyntheticShift = SyntheticShift()

    @model_validator(mode="after")
    def _sides(self) -> "SyntheticParams":
        if self.image_min_side > self.image_max_side:
            raise ValueError("image_min_side must not exceed image_max_side")
        return self


class HatefulMemesSourceParams(Section):
    hf_dataset: str = "neuralcatcher/hateful_memes"
    # Google Drive file id of the image archive (img/ folder). Null: images come from the HF copy.
    gdrive_archive_id: str | None = None
    local_dir: str | None = None  # an MMF-layout folder to copy instead of downloading


class LocalSourceParams(Section):
    local_dir: str | None = None
    url: str | None = None


COCO_2017_URLS = (
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    # 5k images (~1 GB); add http://images.cocodataset.org/zips/train2017.zip (~18 GB) for 118k.
    "http://images.cocodataset.org/zips/val2017.zip",
)


class CocoSourceParams(Section):
    local_dir: str | None = None  # a folder with annotations/ and train2017/ or val2017/
    urls: tuple[str, ...] = COCO_2017_URLS  # zips extracted into data/coco/ when no local_dir


class FetchParams(Section):
    hateful_memes: HatefulMemesSourceParams = HatefulMemesSourceParams()
    mmhs150k: LocalSourceParams = LocalSourceParams()
    fakeddit: LocalSourceParams = LocalSourceParams()
    coco: CocoSourceParams = CocoSourceParams()
    # Archives expanding past this are refused (zip bombs); null turns the cap off.
    max_extracted_bytes: int | None = Field(100 * 2**30, ge=1)


class IngestParams(Section):
    sources: tuple[SourceName, ...] = ("synthetic",)
    max_text_chars: int = Field(1000, ge=16)
    max_image_pixels: int = Field(40_000_000, ge=1024)  # decompression-bomb guard
    # Image files above this are quarantined (file_too_large) before a byte is read.
    max_image_bytes: int = Field(50 * 2**20, ge=1024)
    min_image_side: int = Field(16, ge=1)
    # Sources without splits are split by a hash of the id with these fractions.
    splits: SplitFractions = SplitFractions()
    # Processes for image checks and conversion; 0: one per available CPU core.
    workers: int = Field(0, ge=0)


class DedupeParams(Section):
    near_hamming_threshold: int = Field(6, ge=0, le=64)  # on a 64-bit perceptual hash
    # When duplicates span splits, the copy in the first split listed here is kept.
    split_priority: tuple[Split, Split, Split] = ("test", "val", "train")


class ValidateParams(Section):
    min_rows_per_split: int = Field(10, ge=1)
    max_text_chars: int = Field(1000, ge=16)
    min_image_side: int = Field(16, ge=1)
    max_image_side: int = Field(10_000, ge=16)
    # A class may hold at most this share of a split before the (warning-level) check flags it.
    max_class_share: float = Field(0.95, gt=0, le=1)


class ShardParams(Section):
    train_samples_per_shard: int = Field(10_000, ge=1)
    eval_samples_per_shard: int = Field(1_000, ge=1)
    image_short_side: int = Field(256, ge=16)
    jpeg_quality: int = Field(90, ge=50, le=100)
    # Processes for image resize/encode; 0: one per available CPU core.
    workers: int = Field(0, ge=0)


class LoraParams(Section):
    # Used when model.finetune is `lora` (the one switch for LoRA). Dropout has no effect on the
    # attention adapters: their delta is added to weights (see pipeline/model/lora.py).
    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)


class HeadParams(Section):
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    width: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _width_splits_into_heads(self) -> "HeadParams":
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        return self


class ModelParams(Section):
    name: str = "tiny"  # an open_clip model name, or `tiny` (pipeline/model/configs/tiny.json)
    pretrained: str | None = None  # an open_clip pretrained tag, a local weights path, or null
    fusion: Literal["transformer", "concat_mlp"] = "transformer"
    modality: Literal["both", "text", "image"] = "both"
    finetune: Literal["lora", "full", "frozen"] = "lora"
    lora: LoraParams = LoraParams()
    head: HeadParams = HeadParams()


class TrainParams(Section):
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip_norm: float = Field(1.0, ge=0)  # 0 turns clipping off
    grad_accum_steps: int = Field(1, ge=1)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    grad_checkpointing: bool = False
    train_num_samples: int | None = Field(None, ge=1)  # one epoch; null: the train split's size
    upsampling: dict[str, float] = Field(default_factory=dict)  # class name -> factor
    shuffle_buffer: int = Field(1000, ge=0)
    num_workers: int = Field(0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(1.0, ge=0)
    checkpoint_every: int = Field(1, ge=1)
    early_stopping_patience: int = Field(8, ge=0)  # 0 turns early stopping off
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    # Speed-up switches, each measured on and off by `make bench-gpu` (README, "GPU").
    tf32: Switch = "auto"  # TF32 matmuls/convolutions for what runs in fp32; no effect on CPU
    channels_last: Switch = "off"  # NHWC images and conv weights (a ViT has one conv)
    fused_adamw: Switch = "auto"  # AdamW as one fused kernel
    compile: Switch = "off"  # torch.compile the training forward/backward (minutes to compile)
    pin_memory: Switch = "auto"  # page-locked batches, async host-to-GPU copies; CUDA only


class EvaluateParams(Section):
    # Binary task: the decision threshold is chosen on validation by this rule, never on test.
    threshold_rule: Literal["youden", "f1", "fixed"] = "youden"
    fixed_threshold: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(128, ge=1)
    # Binary task: operating points. For each false-positive rate the threshold with the most
    # recall whose val FPR is at most it, applied unchanged to test; the served model carries
    # the primary one's threshold (null: the first target). pipeline/stages/evaluate.py.
    fpr_targets: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field((0.01, 0.05),
                                                                          min_length=1)
    primary_fpr: float | None = Field(0.05, gt=0, lt=1)
    # Temperature scaling fitted on val (pipeline/calibration.py); the served model applies it.
    calibration: Literal["temperature", "none"] = "temperature"
    # Test-set intervals (percentile bootstrap, resampled within each class), level 1 - alpha.
    bootstrap_resamples: int = Field(2000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0

    @model_validator(mode="after")
    def _primary_is_a_target(self) -> "EvaluateParams":
        if self.primary_fpr is not None and not any(
                abs(self.primary_fpr - t) < 1e-12 for t in self.fpr_targets):
            raise ValueError(f"primary_fpr {self.primary_fpr} is not one of fpr_targets "
                             f"{list(self.fpr_targets)}")
        return self

    @property
    def primary(self) -> float:
        return self.fpr_targets[0] if self.primary_fpr is None else self.primary_fpr


class ChecksParams(Section):
    min_class_share: float = Field(0.0, ge=0, le=1)
    max_class_share: float = Field(0.95, ge=0, le=1)
    # A collapsed class distribution is reported; `error` makes it stop the pipeline.
    class_share_level: Literal["error", "warning"] = "warning"
    probability_sum_tolerance: float = Field(1e-4, gt=0, le=0.1)


class EmbeddingDriftParams(Section):
    # The maximum mean discrepancy of the model's image / text embeddings (Evidently's
    # MMDDriftMethod statistic), judged by a permutation test per comparison
    # (pipeline/drift_verdict.py): no fixed threshold, whose false-alarm rate would depend on
    # the number of rows.
    method: Literal["mmd"] = "mmd"
    # Relabellings of the pooled rows per test; seeded, so a verdict is reproducible. The p-value
    # resolution is 1 / (permutations + 1): it must reach each modality's level, alpha / 4.
    permutations: int = Field(399, ge=19)
    seed: int = 0
    pca_components: int | None = Field(None, ge=1)


class DriftParams(Section):
    reference_split: Split = "train"
    current_split: Split = "test"
    # The overall verdict's false-alarm rate on undrifted sides: half for the two embedding tests,
    # half for the column tests (Bonferroni; see pipeline/drift_verdict.py).
    alpha: float = Field(0.05, gt=0, lt=1)
    # Dataset drift when an embedding drifts, or this share of the columns drifts (each column
    # tested at the corrected level).
    drift_share: float = Field(0.5, gt=0, le=1)
    # Fewer readable rows than this on a side: "too few rows to judge" instead of a report.
    min_rows: int = Field(30, ge=2)
    embeddings: EmbeddingDriftParams = EmbeddingDriftParams()
    log_to_mlflow: bool = True  # reports go to the monitored model's run (or a monitoring run)

    @model_validator(mode="after")
    def _permutations_reach_level(self) -> "DriftParams":
        # Each modality is tested at alpha / 4 (two modalities, half of alpha); the smallest
        # permutation p-value, 1 / (permutations + 1), must be able to get there.
        needed = math.ceil(4 / self.alpha - 1e-9) - 1
        if self.embeddings.permutations < needed:
            raise ValueError(f"embeddings.permutations={self.embeddings.permutations} cannot "
                             f"reach the per-modality level alpha/4={self.alpha / 4:g}; "
                             f"use at least {needed}")
        return self


class MonitoringParams(Section):
    """The capture log of traffic the served model scores (pipeline/monitoring/capture.py)."""

    capture: bool = True
    # A local folder (relative to the project root) or an s3:// URI; MMGUARD_MONITORING_URI
    # overrides it (the stack points it at its S3 store).
    log_uri: str = "artifacts/monitoring/log"
    thumbnail_side: int = Field(128, ge=16, le=512)  # keep >= 2x the model's image size
    flush_rows: int = Field(256, ge=1)  # a part file is written at this many buffered rows...
    flush_seconds: float = Field(10.0, gt=0)  # ...or this long after the first buffered row
    max_bytes: int = Field(1_000_000_000, ge=10_000)  # oldest part files go beyond this
    max_buffer_rows: int = Field(10_000, ge=1)  # rows beyond this are counted as dropped
    # The drift monitor judges the traffic captured in this last window (`mmguard drift --since`).
    traffic_window: str = Field("24h", pattern=r"^\d+(\.\d+)?[smhdw]$")
    # One try, this long, for the registry look-up of the served model's version (made by the
    # capture writer, at exit for `mmguard predict`); past it the rows keep model_version null
    # instead of MLflow's minutes of retries. Whole seconds: MLflow reads it as an int.
    registry_timeout_s: int = Field(5, ge=1, le=120)
    # `mmguard review purge` removes captured traffic (and the review copies made from it)
    # older than this many days.
    retention_days: int = Field(30, ge=1)


class TextPeerParams(Section):
    """The text-only baseline every run trains (pipeline/text_peer.py): TF-IDF over character
    n-grams of the caption, then logistic regression; C is the val-best of `c_grid`."""

    analyzer: Literal["char_wb", "char"] = "char_wb"  # char_wb: n-grams inside word boundaries
    ngram_min: int = Field(2, ge=1)
    ngram_max: int = Field(5, ge=1)
    max_features: int | None = Field(200_000, ge=1)  # the most frequent n-grams; null: all
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation
    # Used when val cannot rank the grid (a one-class val leaves AUROC undefined for every C).
    fallback_c: float = Field(1.0, gt=0)
    max_iter: int = Field(2000, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _grid_and_range(self) -> "TextPeerParams":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max "
                             f"({self.ngram_max})")
        if not self.c_grid or any(not 0 < c < float("inf") for c in self.c_grid):
            raise ValueError(f"c_grid must hold at least one finite C > 0, got {self.c_grid}")
        if len(set(self.c_grid)) != len(self.c_grid):
            raise ValueError(f"c_grid lists a C twice: {self.c_grid}")
        return self


class GateParams(Section):
    min_auroc: float = Field(0.5, ge=0, le=1)
    min_top1: float = Field(0.5, ge=0, le=1)
    min_top2: float = Field(0.7, ge=0, le=1)
    regression_tolerance: float = Field(0.01, ge=0, le=1)
    # The challenger's metric of record (AUROC; top-1 for seven classes) must exceed the text
    # peer's by more than this (a gain equal to it fails; see gate.py).
    min_gain_over_text_peer: float = Field(0.0, ge=0, le=1)
    # Shadow rows (requests the challenger scored beside the champion, pipeline/monitoring/
    # shadow.py) the challenger needs in monitoring.traffic_window before it may be promoted;
    # 0: not required. `shadow.shadow_rows` counts them.
    require_shadow_rows: int = Field(0, ge=0)
    # The bootstrap rule (pipeline/registry/gate.py `decide`): paired resamples of the gate's
    # test rows, seeded; intervals at level 1 - alpha. The challenger is promoted only when the
    # lower bound of (challenger - champion) on the metric of record is above min_delta
    # (negative: a non-inferiority margin). No champion: the lower bound of its own interval
    # must clear the floors above.
    bootstrap_resamples: int = Field(2000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0
    min_delta: float = Field(0.0, ge=-1, le=1)
    # Binary: refused when the whole interval of (challenger - champion) recall at the primary
    # FPR's threshold lies below -recall_tolerance.
    recall_tolerance: float = Field(0.0, ge=0, le=1)
    # Slices (source, class, each grouping column) with at least this many rows in the compared
    # subset are checked; one whose interval (Bonferroni over all slice comparisons) lies wholly
    # on the worse side of slice_tolerance refuses the challenger.
    min_slice_rows: int = Field(20, ge=2)
    slice_tolerance: float = Field(0.0, ge=0, le=1)


class RegistryParams(Section):
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    experiment: str = "mmguard"
    model_name: str = "mmguard-{task}"
    gate: GateParams = GateParams()


class StageTaskParams(Section):
    """One Airflow task's limits; unset keys fall back to the `airflow` section's defaults."""

    retries: int | None = Field(None, ge=0)
    execution_timeout_min: float | None = Field(None, gt=0)


class AirflowParams(Section):
    """How the retrain DAG runs each DVC stage (read when Airflow parses the DAG)."""

    retries: int = Field(1, ge=0)
    retry_delay_s: int = Field(60, ge=0)
    execution_timeout_min: float = Field(60, gt=0)
    # Per DVC stage overrides, e.g. train: {retries: 2, execution_timeout_min: 240}.
    stages: dict[str, StageTaskParams] = Field(default_factory=dict)
    # Stages that need a GPU run in the `gpu` pool and on the `gpu` queue (Celery GPU workers);
    # the pool's slots bound how many of them run at once.
    gpu_stages: tuple[str, ...] = ("train",)
    gpu_pool_slots: int = Field(1, ge=1)
    # Failure e-mails go through this Airflow connection when it exists (else a log line).
    smtp_conn_id: str = "smtp_default"
    alert_to: tuple[str, ...] = ()

    def for_stage(self, name: str) -> tuple[int, float]:
        own = self.stages.get(name, StageTaskParams())
        return (self.retries if own.retries is None else own.retries,
                self.execution_timeout_min if own.execution_timeout_min is None
                else own.execution_timeout_min)
# MLflow's alias names: letters, digits, `_` and `-`.
ALIAS_PATTERN = r"^[A-Za-z0-9_-]+$"


class ServingParams(Section):
    # Caps of the served model; text length and image size/pixels reuse ingest's limits.
    max_rows: int = Field(1000, ge=1)  # rows per request
    max_request_bytes: int = Field(32 * 2**20, ge=1024)  # image + text data of one request
    # The served model re-reads this registry alias every `refresh_seconds` and swaps in the
    # version it names (pipeline/hot_swap.py); null: serve the loaded version only. A model
    # loaded by a version URI follows it too.
    follow_alias: str | None = Field("champion", pattern=ALIAS_PATTERN)
    refresh_seconds: float = Field(30.0, ge=0)  # 0: resolve once at start, never again
    # An alias (e.g. challenger) that also scores every request off the request path; both
    # answers go to the capture log (role served / shadow). null: off.
    shadow: str | None = Field(None, pattern=ALIAS_PATTERN)
    # Requests waiting for the shadow; beyond this they are dropped (counted), never waited for.
    shadow_max_pending: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _shadow_is_another_alias(self) -> "ServingParams":
        if self.shadow is not None and self.shadow == self.follow_alias:
            raise ValueError(f"shadow ({self.shadow}) must be another alias than follow_alias")
        return self


class ReviewParams(Section):
    """The human review queue (pipeline/review/): which captured rows people label."""

    # binary: a row whose P(positive) lies within `band` of the served threshold is uncertain
    band: float = Field(0.1, ge=0, le=0.5)
    # seven classes: a row whose top-1 probability is below this, or whose top-1 minus top-2
    # margin is below `margin_below`, is uncertain
    top1_below: float = Field(0.5, ge=0, le=1)
    margin_below: float = Field(0.2, ge=0, le=1)
    qc_rows: int = Field(10, ge=0)  # confident rows drawn at random for quality control
    max_items: int = Field(200, ge=1)  # rows one queue run may pick, in priority order
    seed: int = 0  # the QC sample's draw


class Params(Section):
    task: Task = "hateful_memes"
    synthetic: SyntheticParams = SyntheticParams()
    fetch: FetchParams = FetchParams()
    ingest: IngestParams = IngestParams()
    dedupe: DedupeParams = DedupeParams()
    # `validate` would shadow a pydantic method, hence the alias.
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    shard: ShardParams = ShardParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    checks: ChecksParams = ChecksParams()
    text_peer: TextPeerParams = TextPeerParams()
    drift: DriftParams = DriftParams()
    monitoring: MonitoringParams = MonitoringParams()
    registry: RegistryParams = RegistryParams()
    airflow: AirflowParams = AirflowParams()
    serving: ServingParams = ServingParams()
    review: ReviewParams = ReviewParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              protected_namespaces=())


def switch_on(value: Switch, cuda: bool) -> bool:
    """A speed-up switch resolved for the device: `auto` follows whether it is CUDA."""
    return value == "on" or (value == "auto" and cuda)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names each bad key."""


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]).replace("validate_", "validate")
    message = error["msg"]
    if error.get("type") == "extra_forbidden":
        message = "unknown key"
    got = error.get("input")
    shown = "" if isinstance(got, dict) or error.get("type") == "missing" else f" (got {got!r})"
    return f"  {key}: {message}{shown}"


def parse_params(raw: dict | None) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError("invalid params.yaml:\n" + "\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return parse_params(raw)
