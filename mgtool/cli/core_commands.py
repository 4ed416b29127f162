"""``convert``, ``export`` and ``info``: moving between plain and template-mixing form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mgtool.cli.common import (
    ForceOpt,
    JsonOpt,
    OutOpt,
    SrcArg,
    arch_spec,
    check_arch,
    console,
    done,
    emit,
    handle_errors,
    usage_error,
)


@handle_errors
def convert_cmd(
    src: Annotated[str, typer.Argument(
        help="Input checkpoint file, hf-hub:OWNER/NAME[@REV], local-dir:PATH (a timm folder), "
        "or a timm model name with --pretrained.", show_default=False)],
    output: OutOpt,
    arch: Annotated[str | None, typer.Option(help="Architecture family (see `mgtool info --archs`).")] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier (wrn: widen factor k).")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes; inferred from the classifier if omitted.")] = None,
    in_chans: Annotated[int, typer.Option(help="Input channels.")] = 3,
    opt: Annotated[list[str] | None, typer.Option(
        help="Family option KEY=VALUE (repeatable), e.g. depth=16.", metavar="KEY=VALUE")] = None,
    templates: Annotated[int, typer.Option(help="Templates per layer (t).")] = 2,
    share: Annotated[str, typer.Option(help="Bank sharing: 'pairs' (next layer of one shape) or 'none'.")] = "pairs",
    seed: Annotated[int, typer.Option(help="Seed of the decomposition's random parts.")] = 0,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="SRC is a timm model name (e.g. resnet18.a1_in1k): its Hub weights, cached.")] = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Convert a plain checkpoint or a pretrained timm model into template-mixing form, exactly.

    A pretrained source (hf-hub:, local-dir:, --pretrained NAME) names its own architecture,
    width and classes; mgtool infers them (docs/guide-timm.md).

    Reads .safetensors or .pt/.pth (weights_only), verifies that the converted model's
    logits match the original's and that every generated weight matches its original
    relative to that weight's own scale, and refuses to write otherwise. float64
    weights stay float64.

    Example: mgtool convert wrn16_4.pt --arch wrn --width 4 --opt depth=16 -o wrn16_4.tm.safetensors

    Example: mgtool convert hf-hub:timm/resnet18.a1_in1k -o r18.tm.safetensors
    """
    from mgtool.checkpoint import check_output_path
    from mgtool.convert import convert
    from mgtool.sources import is_timm_name, parse_source, resolve_source

    name = parse_source(src, pretrained=pretrained)
    if name is not None:
        if arch is not None or width is not None or opt or num_classes is not None:
            raise usage_error(f"{src} names its own architecture, width and classes; drop --arch, --width, "
                              "--opt and --num-classes")
        check_output_path(output, force)
        resolved = resolve_source(name)
        result = convert(resolved.weights, resolved.spec, templates=templates, share=share, seed=seed,
                         out=output, force=force, source=resolved.record)
        done("converted", f"{name} ({resolved.spec.describe()}) -> {result.path}  "
             f"max |logit diff| {result.max_abs_logit_diff:.3g} (scale {result.logit_scale:.3g})")
        emit(result.path, {**result.to_dict(), "source": resolved.record}, json_)
        return
    src = Path(src)
    if not src.exists() and is_timm_name(str(src)):
        raise usage_error(f"{src}: no such file, but a timm model name: add --pretrained for its pretrained weights")
    if arch is None and not _has_mgtool_metadata(src):
        raise usage_error(f"{src}: no mgtool metadata names its architecture; pass --arch and --width "
                          "(families: `mgtool info --archs`)")
    check_arch(arch)
    spec = arch_spec(arch, width, num_classes, in_chans, opt)
    result = convert(src, spec, templates=templates, share=share, seed=seed, out=output, force=force)
    dtype = result.to_dict()["dtype"]
    done("converted", f"{src} -> {result.path}  "
         f"max |logit diff| {result.max_abs_logit_diff:.3g} (scale {result.logit_scale:.3g}), "
         f"max |weight diff| {result.max_abs_weight_diff:.3g} "
         f"({result.weights.worst_relative:.2g} of its own scale at worst), {dtype}")
    emit(result.path, result.to_dict(), json_)


@handle_errors
def export_cmd(
    src: SrcArg,
    output: OutOpt,
    format_: Annotated[str, typer.Option(
        "--format", help="mgtool (a plain .safetensors file) or timm-dir (a folder timm loads).")] = "mgtool",
    eval_json: Annotated[Path | None, typer.Option(
        help="timm-dir: an `mgtool eval --json` output whose accuracy the model card reports.")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Export a template-mixing checkpoint to a plain one with the family's own key names.

    The result loads with strict=True into the family's model (timm.create_model for
    the resnet families). --format timm-dir writes a folder (model.safetensors, config.json,
    README.md model card) that timm.create_model('local-dir:DIR', pretrained=True) loads.

    Example: mgtool export grown.safetensors -o grown.plain.safetensors
    """
    _check_choice("--format", format_, ("mgtool", "timm-dir"))
    if format_ == "timm-dir":
        from mgtool.timm_dir import export_timm_dir

        result_dir = export_timm_dir(src, output, force=force, eval_results=_read_json(eval_json))
        done("exported", f"{src} -> {result_dir.path}/ (timm {result_dir.architecture}, logits checked through timm: "
             f"max |diff| {result_dir.logits.max_abs_diff:.3g}, scale {result_dir.logits.scale:.3g})")
        emit(result_dir.path, result_dir.to_dict(), json_)
        return
    if eval_json is not None:
        raise usage_error("--eval-json goes with --format timm-dir (it feeds the model card)")
    from mgtool.export import export

    result = export(src, output, force=force)
    done("exported", f"{src} -> {result.path} ({result.parameters:,} values)")
    emit(result.path, result.to_dict(), json_)


@handle_errors
def info_cmd(
    src: Annotated[Path | None, typer.Argument(help="Checkpoint to describe.", show_default=False)] = None,
    json_: JsonOpt = False,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count forward FLOPs with fvcore.")] = True,
    archs: Annotated[bool, typer.Option("--archs", help="List the architecture families instead.")] = False,
    card: Annotated[bool, typer.Option("--card", help="Print the model card (markdown) on stdout instead.")] = False,
    check_parents: Annotated[bool, typer.Option(
        "--check-parents", help="Recompute each recorded ancestor's sha256 from its file; exit 1 on a mismatch.",
    )] = False,
) -> None:
    """Describe a checkpoint: architecture, kind, parameters, banks, FLOPs, provenance.

    Example: mgtool info net1.safetensors --json
    """
    if archs:
        _list_archs(json_)
        return
    if src is None:
        raise typer.BadParameter("give a checkpoint, or --archs", param_hint="SRC")
    if card or check_parents:
        _card_and_parents(src, card, check_parents, json_)
        return
    from mgtool.info import checkpoint_info

    info = checkpoint_info(src, count_flops=flops)
    if json_:
        emit(src, info, True)
        return
    _print_info(info)
    emit(src, info, False)


def _card_and_parents(src: Path, card: bool, check: bool, as_json: bool) -> None:
    import sys

    from mgtool.card import check_parents, model_card
    from mgtool.checkpoint import read_meta
    from mgtool.errors import MgtoolError

    meta = read_meta(src)
    if card:
        hint = f"```python\nimport mgtool\nmodel = mgtool.load({str(src)!r})\n```"
        sys.stdout.write(model_card(meta, name=src.name, load_hint=hint) + "\n")
    if check:
        results = check_parents(meta, src.parent)
        for r in results:
            console.print(f"{r.status:8} {r.path} recorded {r.recorded[:16]} found {(r.found or '-')[:16]}",
                          soft_wrap=True)
        if as_json and not card:
            emit(src, {"parents": [r.to_dict() for r in results]}, True)
        bad = [r.path for r in results if r.status == "MISMATCH"]
        if bad:
            raise MgtoolError(f"{src}: {len(bad)} parent file(s) differ from their recorded sha256: {bad[0]}"
                              + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    from mgtool.errors import MgtoolError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MgtoolError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise MgtoolError(f"{path}: expected the JSON object `mgtool eval --json` prints")
    return data


def _check_choice(label: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise usage_error(f"{label} must be one of {', '.join(choices)}, got {value!r}")


def _has_mgtool_metadata(src: Path) -> bool:
    from mgtool.checkpoint import METADATA_KEY, read_raw_metadata

    if src.suffix != ".safetensors" or not src.is_file():
        return not src.exists()  # a missing file gets its own error
    try:
        return METADATA_KEY in (read_raw_metadata(src) or {})
    except Exception:
        return True  # unreadable: convert reports it


def _list_archs(as_json: bool) -> None:
    from mgtool.archs import family_names, get_family

    rows = {n: {"summary": get_family(n).summary, "options": get_family(n).options} for n in family_names()}
    if as_json:
        emit(None, rows, True)
        return
    table = Table(title="architecture families")
    for col in ("name", "options (defaults)", "summary"):
        table.add_column(col, overflow="fold")  # folded, never cut with "…" (80 columns)
    for name, row in rows.items():
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in row["options"].items()), row["summary"])
    console.print(table)


def _print_info(info: dict) -> None:
    arch = info["arch"]
    opts = ", ".join(f"{k}={v}" for k, v in arch["options"].items())
    table = Table(title=info["path"], show_header=False)
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    table.add_row("kind", info["kind"])
    table.add_row("architecture", f"{arch['name']} width={arch['width']:g} classes={arch['num_classes']} "
                                  f"in_chans={arch['in_chans']} {opts}")
    for key, value in info["parameters"].items():
        table.add_row(f"params: {key}", f"{value:,}")
    fl = info["flops"]
    if "forward_per_sample" in fl:
        table.add_row("forward FLOPs/sample", f"{fl['forward_per_sample']:.4g} at {fl['input_size']}")
    if info.get("tile_ratio"):
        s = info["tile_ratio"]
        table.add_row("tile ratio s (new/diagonal)",
                      f"median {s['median']:.3g}, min {s['min']:.3g}, max {s['max']:.3g}")
    table.add_row("training FLOPs spent", f"{fl['training']:.4g} (given: {fl['given']:.4g})")
    prov = info["provenance"]
    table.add_row("created", f"{prov['created_utc']} by mgtool {prov['mgtool_version']}")
    table.add_row("command", " ".join(prov["command"]))
    for parent in prov["parents"]:
        table.add_row(f"parent ({parent['role']})", f"{parent['path']} sha256:{parent['sha256'][:12]}")
    console.print(table)
    if "plan" in info:
        banks = Table(title=f"template banks (t={info['plan']['templates_per_layer']}, share={info['plan']['share']})")
        for col in ("bank", "shape (sets, K, *tile)", "grids", "layers"):
            banks.add_column(col, overflow="fold")
        for b in info["plan"]["banks"]:
            banks.add_row(b["name"], str(tuple(b["shape"])), ", ".join(b["grids"]), ", ".join(b["layers"]))
        console.print(banks)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.command("export")(export_cmd)
    app.command("info")(info_cmd)
