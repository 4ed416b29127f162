"""``fuse`` (MixtureGrowth) and ``grow`` (the Random, Net2Net and clone baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgtool.cli.common import ForceOpt, JsonOpt, OutOpt, console, done, emit, handle_errors, usage_error

SeedOpt = Annotated[int, typer.Option(help="Seed of the new coefficients / weights / unit maps.")]


@handle_errors
def fuse_cmd(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Small template-mixing checkpoints: net 1 (A), then net 2 (B), ...", show_default=False),
    ],
    output: OutOpt,
    init: Annotated[
        str, typer.Option(help="New coefficients: orthogonal, random, normal, copy or zero.")
    ] = "orthogonal",
    factor: Annotated[
        int | None,
        typer.Option(help="Growth factor g; with several inputs it must equal their number (default: that, or 2)."),
    ] = None,
    seed: SeedOpt = 0,
    noise: Annotated[float, typer.Option(help="--init copy: std of the Gaussian noise added.")] = 0.0,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check that the grown net with its new tiles zeroed computes the sum "
            "of the inputs' logits before writing.",
        ),
    ] = False,
    allow_same: Annotated[bool, typer.Option(
        "--allow-same", help="Accept the same file twice (net 1 fused with itself).")] = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fuse small template-mixing nets into one g-times-wider net (MixtureGrowth).

    Tile (r, r) of every hidden layer is net r's layer, row r mixes from net r's
    templates, the off-diagonal tiles get new coefficients from --init; per-channel
    tensors are concatenated and the classifier bias summed, so with --init zero the
    grown net computes the sum of the nets' logits. One input grows it without fusion.

    Example: mgtool fuse net1.safetensors net2.safetensors --init orthogonal -o grown.safetensors
    """
    from mgtool.coef_init import init_names
    from mgtool.fuse import fuse

    if init not in init_names():
        raise usage_error(f"--init: unknown initialiser {init!r}; known: {', '.join(init_names())}")
    seen: dict[Path, Path] = {}
    for src in sources:
        same = seen.get(src.resolve())
        if same is not None and not allow_same:
            raise usage_error(f"{src}: given twice (also as {same}); fusing a net with itself is rarely "
                              "meant: pass two different nets, or --allow-same")
        seen[src.resolve()] = src
    result = fuse(sources, output, init=init, factor=factor, seed=seed, noise=noise, verify=verify, force=force)
    d = result.to_dict()
    done("fused", f"{len(sources)} net(s) -> {result.path}: {result.meta.arch.describe()}, "
         f"{result.new_tiles} new tiles ({init}), {result.parameters:,} parameters")
    if "verify" in d:
        console.print(
            f"verified: max |logit diff| {d['verify']['max_abs_logit_diff']:.3g} "
            f"(scale {d['verify']['logit_scale']:.3g}) against the sum of the inputs"
        )
    emit(result.path, d, json_)


@handle_errors
def grow_cmd(
    src: Annotated[Path, typer.Argument(help="Plain checkpoint (e.g. from `mgtool export`).", show_default=False)],
    output: OutOpt,
    method: Annotated[
        str, typer.Option(help="random (new weights from the family's init), net2net or clone (HyperCloning).")
    ],
    factor: Annotated[int, typer.Option(help="Growth factor g.")] = 2,
    seed: SeedOpt = 0,
    noise: Annotated[
        float,
        typer.Option(help="net2net/clone symmetry breaking: noise RMS / weight RMS (SNR 1/noise^2), "
                     "zero-sum over copies so the function is kept."),
    ] = 0.0,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Widen a plain checkpoint: Random, or Net2Net / clone (both function-preserving).

    Example: mgtool grow small.plain.safetensors --method net2net -o wide.plain.safetensors
    """
    from mgtool.grow_baselines import grow

    result = grow(src, output, method=method, factor=factor, seed=seed, noise=noise, force=force)
    d = result.to_dict()
    note = ""
    if "verify" in d:
        note = f", max |logit diff| {d['verify']['max_abs_logit_diff']:.3g} (scale {d['verify']['logit_scale']:.3g})"
    done("grew", f"{src} -> {result.path} ({method}, x{factor}){note}")
    emit(result.path, d, json_)


def register(app: typer.Typer) -> None:
    app.command("fuse")(fuse_cmd)
    app.command("grow")(grow_cmd)
