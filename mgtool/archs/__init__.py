"""Architecture families (WRN, timm ResNets and ViTs, tiny test nets) and their registry."""

from mgtool.archs.registry import (
    Family,
    build_plain,
    family_names,
    get_family,
    grow_spec,
    input_size,
    register_family,
    resolve_spec,
    tiny_spec,
)
from mgtool.archs.spec import ArchSpec

__all__ = [
    "ArchSpec",
    "Family",
    "build_plain",
    "family_names",
    "get_family",
    "grow_spec",
    "input_size",
    "register_family",
    "resolve_spec",
    "tiny_spec",
]
