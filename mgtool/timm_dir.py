"""``export --format timm-dir``: a folder that ``timm.create_model('local-dir:DIR')`` loads, no mgtool needed.

The folder holds ``model.safetensors`` and ``config.json`` written by timm's own
``save_for_hf`` (architecture, ``num_classes``, ``model_args``, ``pretrained_cfg`` with the
input size, mean/std and interpolation of the data set used), and ``README.md``, the model
card. It is written to a temporary folder beside DIR, loaded back through timm and checked
on logits against the mgtool model, then renamed into place: never a partial folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgtool.archs import ArchSpec, get_family, input_size
from mgtool.card import model_card
from mgtool.checkpoint import CheckpointMeta, check_finite, check_keys
from mgtool.errors import MgtoolError, first_line
from mgtool.loading import load_checkpoint
from mgtool.model import TemplateMixingNet
from mgtool.safe_write import make_parent
from mgtool.verify import LogitCheck, compare_logits, require_preserved

TIMM_DIR_FILES = ("model.safetensors", "config.json", "README.md", "pytorch_model.bin")
# pretrained_cfg fields of timm's base model that describe its own published weights, not ours
FOREIGN_CFG_KEYS = ("tag", "hf_hub_id", "paper_ids", "paper_name", "origin_url", "license", "notes",
                    "test_input_size", "test_crop_pct", "test_pool_size", "label_names", "label_descriptions")


@dataclass(frozen=True)
class TimmDirResult:
    path: Path
    architecture: str
    model_args: dict[str, Any]
    logits: LogitCheck

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.path), "architecture": self.architecture, "model_args": self.model_args,
                **self.logits.to_dict()}


def timm_architecture(spec: ArchSpec) -> tuple[str, dict[str, Any]]:
    """timm's model name and keyword arguments for ``spec`` (its family's ``TimmBridge``), or a one-line refusal."""
    bridge = get_family(spec.name).timm
    if bridge is None:
        raise MgtoolError(f"the {spec.name} family is not registered with timm, so timm.create_model cannot load "
                          "it; export an mgtool file instead (mgtool export SRC -o OUT.safetensors) and load it "
                          "with mgtool.load")
    return bridge.to_timm(spec)


def export_timm_dir(src: Path | str, out: Path | str, *, force: bool = False,
                    eval_results: dict[str, Any] | None = None) -> TimmDirResult:
    """Write the timm folder ``out`` for the checkpoint ``src`` (either kind), checked through timm."""
    import timm
    from timm.models import save_for_hf

    src, out = Path(src), Path(out)
    _check_output_dir(out, force)
    model, meta = load_checkpoint(src)
    architecture, kwargs = timm_architecture(meta.arch)
    sd = model.materialised_state_dict() if isinstance(model, TemplateMixingNet) else model.state_dict()
    check_finite(sd, src)
    net = timm.create_model(architecture, pretrained=False, **kwargs)
    check_keys(net.state_dict(), sd, f"{src} as timm {architecture}")
    net.load_state_dict(sd, strict=True)
    make_parent(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder to share gets the usual mode
        save_for_hf(net.float(), str(tmp), safe_serialization=True, model_args=kwargs, data_config=_data_config(meta))
        _own_config(tmp / "config.json", _source_cfg(meta).get("license"))
        hint = ("```python\nimport timm\n"
                f"model = timm.create_model(\"local-dir:{literal_path(out)}\", pretrained=True)  # no mgtool\n```")
        card = model_card(meta, name=f"{out.name} ({architecture})", load_hint=hint, eval_results=eval_results)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        loaded = timm.create_model(f"local-dir:{tmp}", pretrained=True)
        check = require_preserved(compare_logits(model, loaded, meta.arch),
                                  f"{out}: the timm folder, loaded by timm, differs from {src}")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TimmDirResult(out, architecture, kwargs, check)


def literal_path(path: Path) -> str:
    return json.dumps(str(path))[1:-1]  # a Python string literal's body: quotes and controls escaped


def _check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MgtoolError(f"{out}: is a file; a timm folder needs a folder name")
    if out.exists() and not force:
        raise MgtoolError(f"{out}: already exists; pass --force to replace the folder")
    if out.exists():  # --force replaces a timm folder, never a folder of other files
        others = sorted(p.name for p in out.iterdir() if p.name not in TIMM_DIR_FILES)
        if others:
            raise MgtoolError(f"{out}: holds files a timm folder does not ({', '.join(others[:3])}); --force "
                              "replaces only a timm folder: choose another name, or remove the folder yourself")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (with --force) is moved aside first, then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _data_config(meta: CheckpointMeta) -> dict[str, Any]:
    """Input size, mean/std and interpolation of the data set the net was trained on, else of its
    pretrained source, else the family's default size and timm's defaults."""
    spec = meta.arch
    h, w = input_size(spec)
    if meta.data:
        from mgtool.data import DataConfig, dataset_info, get_dataset
        from mgtool.data.registry import FolderDataset

        cfg = DataConfig.from_meta(meta.data)
        dataset = get_dataset(cfg.name)
        mean, std = dataset.normalisation(cfg)
        with contextlib.suppress(MgtoolError):  # an image folder that is not on this machine: the family's size
            _, h, w = dataset_info(cfg).shape
        folder = isinstance(dataset, FolderDataset)
        out = {"mean": tuple(mean), "std": tuple(std), "interpolation": "bilinear",
               "crop_pct": 0.875 if folder else 1.0}
    else:
        cfg_in = _source_cfg(meta)
        out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg_in.items()
               if k in ("mean", "std", "interpolation", "crop_pct", "crop_mode")}
        if cfg_in.get("input_size"):
            h, w = cfg_in["input_size"][-2:]
    if get_family(spec.name).timm.fixed_input_size:  # e.g. a ViT's, by its pos_embed
        h, w = input_size(spec)
    return {**out, "input_size": (spec.in_chans, int(h), int(w))}


def _source_cfg(meta: CheckpointMeta) -> dict[str, Any]:
    """The ``pretrained_cfg`` the lineage's pretrained source recorded, or {}."""
    source = meta.provenance.source or next(
        (r["source"] for r in reversed(meta.provenance.lineage) if isinstance(r.get("source"), dict)), None)
    return dict((source or {}).get("pretrained_cfg") or {})


def _own_config(path: Path, license_: str | None) -> None:
    """Drop the fields timm copied from its base model's published weights (tag, paper, licence);
    the licence of the pretrained weights this net started from, if any, is kept."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MgtoolError(f"{path}: timm wrote an unreadable config ({first_line(e)})") from None
    for key in FOREIGN_CFG_KEYS:
        config.get("pretrained_cfg", {}).pop(key, None)
    config["pretrained_cfg"]["tag"] = "mgtool"
    if license_:
        config["pretrained_cfg"]["license"] = license_
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
