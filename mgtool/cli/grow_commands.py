"""``fuse`` (MixtureGrowth) and ``grow`` (the Random, Net2Net and clone baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from mgtool.cli.common import (
    ForceOpt,
    JsonOpt,
    OutOpt,
    console,
    done,
    emit,
    handle_errors,
    parse_options,
    usage_error,
)
from mgtool.errors import SettingError

SeedOpt = Annotated[int, typer.Option(help="Seed of the new coefficients / weights / unit maps.")]


def init_help() -> str:
    """``--init``'s help: the registered initialisers' names (mgtool.coef_init)."""
    from mgtool.coef_init import init_names

    return f"New coefficients: {', '.join(init_names())} (see 'Initialisers' below)."


def inits_epilog() -> str:
    """fuse's epilog: every registered initialiser with its summary."""
    from mgtool.coef_init import get_init, init_names

    return "Initialisers (--init):\n\n" + "\n\n".join(f"{n}: {get_init(n).summary}" for n in init_names())


def init_opt_help() -> str:
    """``--init-opt``'s help: the settings each registered initialiser declares."""
    from mgtool.coef_init import get_init, init_names

    declared = [f"{n}: {', '.join(p.name for p in get_init(n).params)}" for n in init_names() if get_init(n).params]
    return f"Any setting the chosen initialiser declares ({'; '.join(declared)}), NAME=VALUE (repeatable)."


class RegistryHelpCommand(TyperCommand):
    """fuse's command: the help of ``--init`` and ``--init-opt`` and the epilog are written from the initialiser
    registry when help or the parameters are first asked for (help, docs, parsing), not when the CLI
    starts (the registry imports torch; ``mgtool --help`` must not)."""

    def get_params(self, ctx: Any) -> list[Any]:
        self._write_registry_help()
        return super().get_params(ctx)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._write_registry_help()
        super().format_help(ctx, formatter)

    def _write_registry_help(self) -> None:
        if self.epilog is None:
            self.epilog = inits_epilog()
        for param in self.params:
            write = {"init": init_help, "init_opt": init_opt_help}.get(param.name or "")
            if write is not None and not getattr(param, "from_registry", False):
                param.help, param.from_registry = write(), True  # type: ignore[attr-defined]


@handle_errors
def fuse_cmd(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Small template-mixing checkpoints: net 1 (A), then net 2 (B), ...", show_default=False),
    ],
    output: OutOpt,
    init: Annotated[
        str, typer.Option(help="New coefficients (the list is written from the initialiser registry).")
    ] = "orthogonal",
    factor: Annotated[
        int | None,
        typer.Option(help="Growth factor g; with several inputs it must equal their number (default: that, or 2)."),
    ] = None,
    seed: SeedOpt = 0,
    noise: Annotated[float, typer.Option(help="--init copy: std of the Gaussian noise added.")] = 0.0,
    init_scale: Annotated[
        float | None,
        typer.Option(
            help="Every new tile's weight norm as S times the mean norm of its layer's diagonal tiles "
            "(orthogonal, random, normal, copy). Overrides --init-norm's rule (default: none).",
            show_default=False,
        ),
    ] = None,
    init_norm: Annotated[
        str | None,
        typer.Option(
            help="How the new coefficients are scaled. orthogonal: 'capped' (default) unit vectors with every "
            "new tile's norm capped at 0.1 of its layer's diagonal tiles'; 'unit' unit vectors (mgtool's "
            "reading of the paper); 'learned' the learned vectors' RMS norm; 'authors-code' what the authors' "
            "code does (two nets only). random: 'learned' (default) or 'unit' (uniform on [0, 1)). copy: "
            "'authors-code' adds the authors' shared unit-norm uniform noise. Excludes --init-scale.",
            show_default=False,
        ),
    ] = None,
    init_opt: Annotated[
        list[str] | None,
        typer.Option(help="Any setting the chosen initialiser declares (written from the registry).",
                     show_default=False, metavar="NAME=VALUE"),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check that the grown net with its new tiles zeroed computes the sum "
            "of the inputs' logits before writing (CNN families; refused for several ViT inputs, "
            "whose LayerNorm makes that untrue).",
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
    tensors are concatenated and the classifier bias summed, so with --init zero a grown
    CNN computes the sum of the nets' logits (a ViT does not: LayerNorm normalises over
    the joined width). One input grows it without fusion.
    --init-scale S sets every new tile's norm to S times the mean of its layer's diagonal
    tiles' norms; --json reports the realised ratio s (tile_ratio: median, min, max),
    the rule that set the norms (init_rule) and, for the default capped rule, what the
    cap did in each layer (init_cap_per_layer). A warning follows a successful fuse whose
    new tiles start outside the range where a measured arm held up.

    Example: mgtool fuse net1.safetensors net2.safetensors -o grown.safetensors

    Example: mgtool fuse net1.safetensors net2.safetensors --init-norm authors-code -o grown.safetensors

    Example: mgtool fuse net1.safetensors net2.safetensors --init-scale 0.25 -o grown.safetensors --json
    """
    options = parse_options(init_opt)
    from mgtool.safe_write import file_identity

    seen: dict[object, Path] = {}
    for src in sources:
        key = file_identity(src) or src.resolve()  # by inode: a hard link is the same file
        same = seen.get(key)
        if same is not None and not allow_same:
            raise usage_error(f"{src}: given twice (also as {same}); fusing a net with itself is rarely "
                              "meant: pass two different nets, or --allow-same")
        seen[key] = src
    from mgtool.fuse import fuse

    try:
        result = fuse(sources, output, init=init, factor=factor, seed=seed, noise=noise, init_scale=init_scale,
                      init_norm=init_norm, init_options=options, verify=verify, force=force)
    except SettingError as e:
        if e.field in options:  # a setting given as --init-opt NAME=VALUE: say so
            raise e.renamed(f"--init-opt {e.field}") from None
        raise
    d = result.to_dict()
    ratio = d["tile_ratio"]
    shown = f", tile ratio s {ratio['median']:.3g} (min {ratio['min']:.3g}, max {ratio['max']:.3g})" if ratio else ""
    rule = d["init_rule"] + (f" at {d['init_cap']:g}" if d["init_cap"] is not None else "")
    done("fused", f"{len(sources)} net(s) -> {result.path}: {result.meta.arch.describe()}, "
         f"{result.new_tiles} new tiles ({init}, {rule}{shown}), {result.parameters:,} parameters")
    if result.warning:
        console.print(f"warning: {result.warning}", style="yellow", soft_wrap=True)
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
    app.command("fuse", cls=RegistryHelpCommand)(fuse_cmd)
    app.command("grow")(grow_cmd)
