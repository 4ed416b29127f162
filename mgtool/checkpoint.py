"""The mgtool checkpoint: a safetensors file whose ``mgtool`` metadata key holds JSON.

See docs/FORMAT.md for the layout. The header is read and validated before any
tensor is loaded; tensors are then checked strictly against the model they belong to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from mgtool import meta_json
from mgtool.archs import ArchSpec, resolve_spec
from mgtool.errors import MgtoolError, first_line
from mgtool.plan import TemplatePlan
from mgtool.provenance import Provenance
from mgtool.safe_write import check_input_file, check_target, write_file

FORMAT_VERSION = 1
METADATA_KEY = "mgtool"


class Kind(str, Enum):
    """What a checkpoint holds. A str enum: ``Kind.PLAIN == "plain"`` and JSON stores the value."""

    PLAIN = "plain"
    TEMPLATE_MIXING = "template-mixing"

    def __str__(self) -> str:
        return self.value


KINDS = tuple(k.value for k in Kind)


@dataclass(frozen=True)
class Flops:
    """Training FLOPs (fvcore multiply-adds, 3x forward per sample) spent in the lineage.

    ``given`` is the part spent on inputs marked "given" (net 1 in the paper's FLOPs
    Norm); ``training - given`` is what this lineage is charged for.
    """

    training: float = 0.0
    given: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"training": self.training, "given": self.given}

    @classmethod
    def from_dict(cls, data: Any) -> Flops:
        _only_keys(data, {"training", "given"}, "flops")
        flops = cls(float(data.get("training", 0.0)), float(data.get("given", 0.0)))
        if not all(math.isfinite(v) and v >= 0 for v in (flops.training, flops.given)):
            raise ValueError(f"flops must be finite and >= 0, got {flops.to_dict()}")
        return flops


@dataclass(frozen=True)
class CheckpointMeta:
    kind: Kind
    arch: ArchSpec
    plan: TemplatePlan | None
    provenance: Provenance
    flops: Flops = field(default_factory=Flops)
    # Free-form sections owned by later stages (data settings, training state summary).
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self, where: str = "metadata") -> str:
        """Strict, finite JSON (a NaN or Inf anywhere is an error naming it)."""
        return meta_json.dumps(
            {
                "format_version": self.format_version,
                "kind": str(self.kind),
                "arch": self.arch.to_dict(),
                "plan": self.plan.to_dict() if self.plan is not None else None,
                "provenance": self.provenance.to_dict(),
                "flops": self.flops.to_dict(),
                "data": self.data,
                "training": self.training,
            },
            where,
        )

    @classmethod
    def from_json(cls, text: str, path: Path | str = "<memory>") -> CheckpointMeta:
        data = meta_json.loads(text, str(path))
        try:
            _only_keys(
                data,
                {"format_version", "kind", "arch", "plan", "provenance", "flops", "data", "training"},
                "metadata",
            )
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise MgtoolError(
                    f"{path}: checkpoint format version {version} is newer than this mgtool "
                    f"understands ({FORMAT_VERSION}); upgrade mgtool"
                )
            if data["kind"] not in KINDS:
                raise MgtoolError(f"{path}: unknown checkpoint kind {data['kind']!r} (expected {KINDS})")
            kind = Kind(data["kind"])
            plan = TemplatePlan.from_dict(data["plan"]) if data.get("plan") is not None else None
            if (plan is None) != (kind == "plain"):
                raise MgtoolError(f"{path}: a {kind} checkpoint must {'not ' if kind == 'plain' else ''}"
                                  "carry a template plan")
            return cls(
                kind=kind,
                arch=resolve_spec(ArchSpec.from_dict(data["arch"])),
                plan=plan,
                provenance=Provenance.from_dict(data["provenance"]),
                flops=Flops.from_dict(data.get("flops", {})),
                data=data.get("data"),
                training=data.get("training"),
                format_version=version,
            )
        except MgtoolError as e:
            msg = str(e)
            raise MgtoolError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise MgtoolError(f"{path}: malformed mgtool metadata ({type(e).__name__}: {e})") from None


def _only_keys(data: Any, allowed: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"{what} must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KeyError(f"{what} has unknown keys {unknown}")


def _check_readable(path: Path) -> None:
    check_input_file(path, "a checkpoint file")


def read_raw_metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header's metadata, or an error naming the path if it is unreadable."""
    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata()
    except Exception as e:  # safetensors raises its own error types for every header problem
        if _looks_like_torch_file(path):
            raise MgtoolError(
                f"{path}: a PyTorch file, not an mgtool checkpoint; convert it first: "
                f"mgtool convert {path} --arch NAME --width W -o {path.with_suffix('.safetensors').name}"
            ) from None
        raise MgtoolError(
            f"{path}: not a readable safetensors file ({first_line(e)}); "
            "is it truncated, or a different format?"
        ) from None


def _looks_like_torch_file(path: Path) -> bool:
    """A .pt/.pth/.bin/.ckpt name, or torch.save's zip or pickle magic bytes."""
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_meta(path: Path | str) -> CheckpointMeta:
    """Read and validate the header of an mgtool checkpoint without loading tensors."""
    path = Path(path)
    raw = read_raw_metadata(path)
    if not raw or METADATA_KEY not in raw:
        raise MgtoolError(
            f"{path}: a safetensors file without mgtool metadata; "
            "convert plain weights first with `mgtool convert`"
        )
    return CheckpointMeta.from_json(raw[METADATA_KEY], path)


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as the safetensors header describes it: nothing is read from the data section."""

    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, F64, BF16, I64, ...


def header_tensors(path: Path | str) -> dict[str, StoredTensor]:
    """Every stored tensor's shape and dtype, from the header alone (``check_keys`` takes the result)."""
    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            names = list(f.keys())  # a safe_open handle is not iterable itself
            for key in names:
                info = f.get_slice(key)
                out[key] = StoredTensor(tuple(info.get_shape()), str(info.get_dtype()))
            return out
    except Exception as e:  # safetensors raises its own error types for every header problem
        raise MgtoolError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


class _FileTensors(Mapping[str, Tensor]):
    """An open file's tensors, each read when it is asked for."""

    def __init__(self, handle: Any, path: Path):
        self._handle, self._path = handle, path

    def __getitem__(self, key: str) -> Tensor:
        try:
            return self._handle.get_tensor(key)
        except Exception as e:
            raise MgtoolError(f"{self._path}: cannot read tensor {key} ({first_line(e)}); "
                              "is the file truncated?") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._handle.keys())

    def __len__(self) -> int:
        return len(self._handle.keys())


def stream_tensors(paths: Sequence[Path | str]) -> Iterator[Mapping[str, Tensor]]:
    """One file open at a time, its tensors read on demand: one input's tensors in memory at once."""
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            yield _FileTensors(handle, Path(path))


def read_tensors(path: Path | str) -> dict[str, Tensor]:
    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as e:
        raise MgtoolError(f"{path}: cannot read tensors ({first_line(e)}); is the file truncated?") from None


def check_keys(expected: dict[str, Tensor], got: dict[str, Tensor], where: str) -> None:
    """Strict key and shape check; the error names a few offenders and a count."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if wrong:
        shown = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3]]
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        problems.append(f"shape mismatches (file vs model): {', '.join(shown)}{more}")
    if problems:
        raise MgtoolError(f"{where}: " + "; ".join(problems))


def _few(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def check_output_path(path: Path | str, force: bool, inputs: Iterable[Path | str] = (), *,
                      lock: bool = True) -> Path:
    """Refuse an output that exists (without ``force``), is not a regular file, is one of
    ``inputs`` or is locked by a running training; create its folder (``safe_write.check_target``)."""
    return check_target(path, force, inputs, lock=lock)


def atomic_write(path: Path, write: Any, *, force: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then publish it (``safe_write.write_file``)."""
    write_file(path, write, force=force)


def check_finite(tensors: dict[str, Tensor], where: Path | str) -> None:
    """Refuse NaN or Inf in any floating tensor (parameters and buffers such as BatchNorm's
    running_var alike): a checkpoint never stores non-finite state as if it were good."""
    for key, value in tensors.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise MgtoolError(f"{where}: tensor {key} holds NaN/Inf; nothing written "
                              "(the input or the training diverged: check the inputs, or lower the lr)")


def save_checkpoint(path: Path | str, tensors: dict[str, Tensor], meta: CheckpointMeta, *, force: bool) -> Path:
    """Write tensors and metadata atomically; never overwrites without ``force``, never
    writes a NaN or Inf."""
    path = check_output_path(path, force)
    check_finite(tensors, path)
    clean: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if storage in storages:  # safetensors refuses tensors that share memory (tied weights)
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        clean[key] = value
    text = meta.to_json(str(path))
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={METADATA_KEY: text}), force=force)
    return path
