"""Pretrained timm models by name: ``hf-hub:timm/NAME[@REV]``, ``local-dir:PATH``, or a timm name.

``resolve_source`` finds the model's ``config.json`` and weights (in the Hugging Face cache
for ``hf-hub:``, never the network when ``HF_HUB_OFFLINE`` is set), asks timm for the
architecture, ``model_args`` and ``pretrained_cfg``, builds timm's own model with the
weights, infers the mgtool family, width and options from that model, and checks that
mgtool's model of the inferred spec computes the same logits with the same weights.
The result names a weights file that ``mgtool.convert`` reads like any other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, family_names, get_family
from mgtool.archs.timm_bridge import TimmBridge
from mgtool.checkpoint import check_keys
from mgtool.errors import MgtoolError, SettingError, first_line
from mgtool.provenance import sha256_file
from mgtool.verify import compare_logits, require_preserved
from mgtool.weights import read_plain_weights

SOURCE_KINDS = ("hf-hub", "local-dir")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PRETRAINED_CFG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode", "license")


@dataclass(frozen=True)
class SourceName:
    kind: str  # "hf-hub", "local-dir" or "timm" (a timm model name, optionally with .TAG)
    ident: str  # repo id, folder or model name
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "timm":
            return self.ident
        return f"{self.kind}:{self.ident}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class PretrainedSource:
    """A resolved source: the mgtool spec, the weights file and what the provenance records."""

    spec: ArchSpec
    weights: Path
    record: dict[str, Any]


def parse_source(text: str, *, pretrained: bool = False) -> SourceName | None:
    """``hf-hub:`` / ``local-dir:`` names, or with ``pretrained`` a timm model name; None for a file path.

    A malformed name is a usage error (``SettingError``, exit 2)."""
    prefix, sep, rest = text.partition(":")
    if sep and prefix in SOURCE_KINDS:
        example = "hf-hub:timm/resnet18.a1_in1k" if prefix == "hf-hub" else "local-dir:PATH/TO/FOLDER"
        if not rest.strip():
            raise _malformed(text, f"nothing after '{prefix}:'; e.g. {example}")
        if prefix == "local-dir":
            return SourceName("local-dir", rest)
        repo, at, revision = rest.partition("@")
        parts = repo.split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts) or (at and not revision) or "@" in revision:
            raise _malformed(text, f"expected hf-hub:OWNER/NAME or hf-hub:OWNER/NAME@REVISION, e.g. {example}")
        return SourceName("hf-hub", repo, revision or None)
    if pretrained:
        if not text or any(c in text for c in "/\\:@"):
            raise _malformed(text, "--pretrained takes a timm model name such as resnet18.a1_in1k; "
                                   "use hf-hub:OWNER/NAME or local-dir:PATH for the others")
        return SourceName("timm", text)
    return None


def is_timm_name(text: str) -> bool:
    """Whether ``text`` names a timm model (``resnet18``, ``resnet18.a1_in1k``)."""
    import timm

    return bool(text) and not any(c in text for c in "/\\:@") and timm.is_model(text)


def _malformed(text: str, problem: str) -> SettingError:
    return SettingError("source", f"{text!r}: {problem}", label="SRC")


def resolve_source(name: SourceName) -> PretrainedSource:
    """Find the files (cache or folder), infer the spec, and check it against timm's own model."""
    if name.kind == "timm":
        return resolve_source(_hub_name_of(name.ident))
    if name.kind == "hf-hub":
        folder, revision = _hub_snapshot(name)
    else:
        folder, revision = Path(name.ident).expanduser(), None
    return _resolve_folder(folder, name, revision)


def _hub_name_of(model: str) -> SourceName:
    """A timm model name (``resnet18.a1_in1k``) -> its ``hf-hub:`` name, from timm's pretrained config."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(model):
        raise MgtoolError(f"timm {timm.__version__} knows no model {model!r}; list them with "
                          "python -c \"import timm; print(timm.list_models('resnet*', pretrained=True))\"")
    try:
        cfg = get_pretrained_cfg(model)
    except RuntimeError as e:  # timm: "Invalid pretrained tag (x) for resnet18."
        raise MgtoolError(f"{model}: {first_line(e)} (tags: timm.list_pretrained('{model.split('.')[0]}*'))") from None
    if cfg is None or not cfg.hf_hub_id:
        raise MgtoolError(f"{model}: timm has no Hugging Face Hub weights for it; name a tag that has "
                          f"(timm.list_pretrained('{model.split('.')[0]}*')) or use local-dir:PATH")
    return SourceName("hf-hub", cfg.hf_hub_id)


def _hub_cache_dir() -> Path:
    """Read from the environment at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return value.upper() in ("1", "ON", "YES", "TRUE")


def _hub_snapshot(name: SourceName) -> tuple[Path, str]:
    """The cached snapshot folder holding config.json and the weights, and its commit hash."""
    config = _hub_file(name, "config.json")
    missing: MgtoolError | None = None
    for weights in WEIGHT_FILES:  # safetensors first; a cached pytorch_model.bin is read with weights_only
        try:
            path = _hub_file(name, weights, quiet=weights != WEIGHT_FILES[0])
        except MgtoolError as e:
            missing = missing or e
            continue
        if path.parent == config.parent:
            return config.parent, config.parent.name
    if missing is not None:
        raise missing
    raise MgtoolError(f"{name}: config.json and the weights are in different snapshots of {_hub_cache_dir()}")


def _hub_file(name: SourceName, filename: str, *, quiet: bool = False) -> Path:
    from huggingface_hub import hf_hub_download

    cache = _hub_cache_dir()
    try:
        return Path(hf_hub_download(name.ident, filename, revision=name.revision, cache_dir=cache,
                                    local_files_only=True))
    except Exception:  # not in the cache (huggingface_hub has a dozen error types for it)
        pass
    reason = "HF_HUB_OFFLINE is set" if _offline() else "not looked up"
    if not _offline() and not quiet:
        try:
            return Path(hf_hub_download(name.ident, filename, revision=name.revision, cache_dir=cache))
        except Exception as e:
            reason = first_line(e, 120)
    rev = f" --revision {name.revision}" if name.revision else ""
    raise MgtoolError(
        f"{name}: {filename} is not in the Hugging Face cache {cache} and cannot be fetched ({reason}); "
        f"on a machine with network run `huggingface-cli download {name.ident}{rev}` and copy its cache "
        "here, or point HF_HOME at a cache that holds it")


def _resolve_folder(folder: Path, name: SourceName, revision: str | None) -> PretrainedSource:
    import timm

    config = folder / "config.json"
    if not folder.is_dir():
        raise MgtoolError(f"{folder}: no such folder (local-dir: takes a timm folder with config.json and "
                          "model.safetensors, as timm.models.save_for_hf writes)")
    if not config.is_file():
        raise MgtoolError(f"{folder}: no config.json; a timm folder holds config.json and model.safetensors "
                          "(timm.models.save_for_hf writes one)")
    pretrained_cfg, architecture, model_args = _read_config(config)
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise MgtoolError(f"{config}: architecture {architecture!r} is not a model timm {timm.__version__} "
                          f"knows; mgtool supports {_supported()}")
    weights = next((folder / w for w in WEIGHT_FILES if (folder / w).is_file()), None)
    if weights is None:
        raise MgtoolError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)}) beside config.json")
    num_classes = int(pretrained_cfg.get("num_classes") or model_args.get("num_classes") or 1000)
    model = _timm_model(architecture, {**model_args, "num_classes": num_classes}, config)
    spec = infer_spec(model, architecture, model_args)
    sd = read_plain_weights(weights)
    _check_same_function(model, spec, sd, str(name))
    tag = pretrained_cfg.get("tag") or None
    record = {
        "name": str(name), "kind": name.kind, "revision": revision, "pretrained_tag": tag,
        "architecture": architecture, "weights": weights.name, "weights_sha256": sha256_file(weights),
        "model_args": model_args,
        "pretrained_cfg": {k: pretrained_cfg[k] for k in PRETRAINED_CFG_KEYS if pretrained_cfg.get(k) is not None},
    }
    return PretrainedSource(spec, weights, json.loads(json.dumps(record, default=list)))


def _read_config(config: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """timm's own parsing of config.json (legacy single-dict configs included)."""
    from timm.models._hub import load_model_config_from_path

    try:
        pretrained_cfg, architecture, model_args = load_model_config_from_path(config.parent)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MgtoolError(f"{config}: not valid JSON ({first_line(e)})") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise MgtoolError(f"{config}: not a timm config ({type(e).__name__}: {first_line(e)}); it needs "
                          "architecture, num_classes, model_args and pretrained_cfg") from None
    if not isinstance(model_args, dict) or not isinstance(pretrained_cfg, dict):
        raise MgtoolError(f"{config}: model_args and pretrained_cfg must be JSON objects")
    return pretrained_cfg, architecture, model_args


def _timm_model(architecture: str, kwargs: dict[str, Any], where: Path) -> nn.Module:
    import timm

    try:
        return timm.create_model(architecture, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise MgtoolError(f"{where}: timm cannot build {architecture} from model_args {kwargs} "
                          f"({type(e).__name__}: {first_line(e)})") from None


def infer_spec(model: nn.Module, architecture: str, model_args: dict[str, Any]) -> ArchSpec:
    """The mgtool spec of a timm model, from the family bridge that claims it, or a one-line refusal."""
    for bridge in _bridges():
        spec = bridge.from_timm(model, architecture, model_args)
        if spec is not None:
            return spec
    raise MgtoolError(f"timm model {architecture!r} ({type(model).__name__}) is outside mgtool's families; "
                      f"mgtool supports {_supported()}")


def _bridges() -> list[TimmBridge]:
    """Every family's ``TimmBridge``, each once (one may serve several families), in name order."""
    return list(dict.fromkeys(b for b in (get_family(n).timm for n in family_names()) if b is not None))


def _supported() -> str:
    return "timm " + " and ".join(b.reads for b in _bridges())


def _check_same_function(timm_model: nn.Module, spec: ArchSpec, sd: dict[str, Tensor], where: str) -> None:
    """timm's model and mgtool's model of ``spec``, both with the weights: same keys, same logits."""
    expected = timm_model.state_dict()
    check_keys(expected, sd, f"{where} (weights vs its config.json)")
    timm_model.load_state_dict(sd, strict=True)
    ours = build_plain(spec)
    try:
        check_keys(ours.state_dict(), sd, f"{where} as {spec.describe()}")
    except MgtoolError as e:
        raise MgtoolError(f"{e}; mgtool cannot express this model exactly") from None
    ours.load_state_dict(sd, strict=True)
    check = compare_logits(timm_model, ours, spec)  # both float32: load_state_dict casts the weights
    require_preserved(check, f"{where}: mgtool's {spec.describe()} differs from timm's model")
