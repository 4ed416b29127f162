"""``train-small``, ``finetune`` and ``eval``: thin wrappers over ``mgtool.train``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mgtool.cli.common import ForceOpt as OverwriteOpt
from mgtool.cli.common import (
    JsonOpt,
    OutOpt,
    check_arch,
    console,
    done,
    emit,
    handle_errors,
    parse_options,
    usage_error,
)
from mgtool.cli.data_options import (
    BatchSizeEvalOpt,
    DataDirOpt,
    DataOpt,
    DataOptOpt,
    DeviceOpt,
    DownloadOpt,
    LimitOpt,
    SplitOpt,
    data_config_from_cli,
)
from mgtool.cli.train_options import with_train_settings

if TYPE_CHECKING:
    from mgtool.train.settings import TrainSettings

SrcArg = Annotated[Path, typer.Argument(help="Input mgtool checkpoint.", show_default=False)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA), fp32 or bf16.")]
ChannelsLastOpt = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="channels_last memory format. (default: on for CUDA)",
    show_default=False)]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
MixingKernelOpt = Annotated[str, typer.Option(
    "--mixing-kernel", help="Weight generation of template mixing: auto (Triton kernels on CUDA, torch "
    "elsewhere), triton, or torch. Where Triton cannot run, torch is used with a warning.")]
LoaderOpt = Annotated[str, typer.Option(
    "--loader", help="auto, device (whole uint8 set on the device) or dataloader (worker processes).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes. "
                                                   "(default: min(8, CPUs))", show_default=False)]
KeepEveryOpt = Annotated[int, typer.Option(
    "--keep-every", help="Also keep a copy of OUT every N epochs, named OUT stem + .epochNNN + suffix (0: never).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or epoch lines.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run of OUT from its "
                                         "OUT-stem.state.pt.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite OUT and start over, discarding "
                                        "its resume state.")]


ArchOpt = Annotated[str | None, typer.Option(help="Architecture family (see `mgtool info --archs`).")]
WidthOpt = Annotated[float | None, typer.Option(help="Width multiplier (wrn: widen factor k).")]
FamilyOpt = Annotated[list[str] | None, typer.Option(
    help="Family option KEY=VALUE (repeatable), e.g. depth=16.", metavar="KEY=VALUE")]
ClassesOpt = Annotated[int | None, typer.Option(help="Classes. (default: the data set's)", show_default=False)]
InChansOpt = Annotated[int | None, typer.Option(help="Input channels. (default: the data set's)", show_default=False)]
TemplatesOpt = Annotated[int | None, typer.Option(help="Templates per layer (t). (default: 2)", show_default=False)]
ShareOpt = Annotated[str | None, typer.Option(help="Bank sharing: pairs or none. (default: pairs)", show_default=False)]
LikeOpt = Annotated[Path | None, typer.Option(
    help="Copy net 1's architecture, template plan and data settings (seeded independently).", show_default=False)]
InitFromOpt = Annotated[Path | None, typer.Option(
    help="Continue training this small template-mixing checkpoint.", show_default=False)]
SmallSeedOpt = Annotated[int | None, typer.Option(
    help="Seed of init, data order and augmentation. (default: 0; with --like: net 1's + 1)", show_default=False)]


def _runtime(device: str, precision: str, channels_last: bool | None, compile_: bool, mixing_kernel: str,
             loader: str, workers: int | None, keep_every: int, quiet: bool):
    from mgtool.errors import check_choice
    from mgtool.mixing import MIXING_KERNELS
    from mgtool.train import Runtime

    check_choice("mixing_kernel", mixing_kernel, MIXING_KERNELS)
    return Runtime(device=device, precision=precision, channels_last=channels_last, compile=compile_,
                   mixing_kernel=mixing_kernel, loader=loader, workers=workers, keep_every=keep_every, quiet=quiet)


def _finish(result, quiet: bool, json_: bool) -> None:
    """Rank 0 only: one line for people (unless --quiet), then the path or the JSON."""
    if not result.is_main:
        return
    d = result.to_dict()
    if not quiet:
        epochs = f"{d['epochs_done']:g} epoch{'' if d['epochs_done'] == 1 else 's'}"
        done("trained", f"{d['output']}: {epochs}, test top-1 {d['test_top1']:.2%}, "
             f"{d['training_flops']:.4g} training FLOPs in total, {d['wall_s']:.1f}s")
    emit(result.out, d, json_)


@handle_errors
@with_train_settings()
def train_small_cmd(
    output: OutOpt,
    train: TrainSettings,
    arch: Annotated[str | None, typer.Option(help="Architecture family (see `mgtool info --archs`).")] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier (wrn: widen factor k).")] = None,
    opt: FamilyOpt = None,
    num_classes: ClassesOpt = None,
    in_chans: InChansOpt = None,
    templates: TemplatesOpt = None,
    share: ShareOpt = None,
    like: LikeOpt = None,
    init_from: InitFromOpt = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    download: DownloadOpt = False,
    seed: SmallSeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = False,
    mixing_kernel: MixingKernelOpt = "auto",
    loader: LoaderOpt = "auto",
    workers: WorkersOpt = None,
    keep_every: KeepEveryOpt = 0,
    quiet: QuietOpt = False,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Train a fresh small template-mixing network with its own templates.

    --like NET1 makes the paper's second network: same architecture, template plan and
    data settings as NET1, new templates from its own seed, ready to fuse with NET1.
    The paper's WRN setting adds --opt norm=block-input (BatchNorm only before blocks).

    Example: mgtool train-small --arch wrn --width 5 --data cifar100 --epochs 200 -o net1.safetensors
    """
    from mgtool.train import train_config, train_small
    from mgtool.train.api import like_seed, stored_data

    sources = [name for name, v in (("--arch", arch), ("--like", like), ("--init-from", init_from)) if v]
    if len(sources) != 1:
        raise typer.BadParameter("give exactly one of --arch (with --width), --like or --init-from",
                                 param_hint="--arch")
    if arch is None and (width is not None or opt or num_classes or in_chans or templates or share):
        raise typer.BadParameter(f"{sources[0]} takes the architecture and template plan from the "
                                 "checkpoint; drop --width/--opt/--num-classes/--in-chans/--templates/"
                                 "--share",
                                 param_hint=sources[0])
    if arch is not None and width is None:
        raise typer.BadParameter("--arch needs --width", param_hint="--width")
    check_arch(arch)
    if templates is not None and templates < 1:
        raise usage_error(f"--templates must be at least 1, got {templates}")
    source = like or init_from
    cfg = data_config_from_cli(data, data_dir, data_opt, download,
                               fallback=stored_data(source) if source else None)
    if like is not None:
        seed = like_seed(like, seed)
    config = train_config(cfg.name, train, seed=seed if seed is not None else 0)
    runtime = _runtime(device, precision, channels_last, compile_, mixing_kernel, loader, workers, keep_every, quiet)
    result = train_small(output, cfg, config, runtime, arch=arch, width=width, options=parse_options(opt),
                         num_classes=num_classes, in_chans=in_chans,
                         templates=2 if templates is None else templates,
                         share=share or "pairs", like=like, init_from=init_from, resume=resume,
                         force=force)
    _finish(result, quiet, json_)


@handle_errors
@with_train_settings()
def finetune_cmd(
    src: SrcArg,
    output: OutOpt,
    train: TrainSettings,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    download: DownloadOpt = False,
    seed: Annotated[int, typer.Option(help="Seed of data order and augmentation.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = False,
    mixing_kernel: MixingKernelOpt = "auto",
    loader: LoaderOpt = "auto",
    workers: WorkersOpt = None,
    keep_every: KeepEveryOpt = 0,
    quiet: QuietOpt = False,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Train any mgtool checkpoint: template-mixing (templates and coefficients) or plain.

    The data set defaults to the one stored in SRC. Under torchrun it trains with DDP.

    Example: torchrun --nproc_per_node 8 -m mgtool finetune grown.safetensors --epochs 137 -o grown.ft.safetensors
    """
    from mgtool.train import finetune, train_config
    from mgtool.train.api import stored_data

    cfg = data_config_from_cli(data, data_dir, data_opt, download, fallback=stored_data(src))
    config = train_config(cfg.name, train, seed=seed)
    runtime = _runtime(device, precision, channels_last, compile_, mixing_kernel, loader, workers, keep_every, quiet)
    result = finetune(src, output, cfg, config, runtime, resume=resume, force=force)
    _finish(result, quiet, json_)


@handle_errors
def eval_cmd(
    src: SrcArg,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    download: DownloadOpt = False,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    batch_size: BatchSizeEvalOpt = 256,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA), fp32 or bf16.")] = "auto",
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Report top-1, top-5 and loss of a checkpoint on a data split.

    The data set defaults to the one stored in SRC.

    Example: mgtool eval net1.safetensors --data cifar100 --json
    """
    from mgtool.train import evaluate_checkpoint
    from mgtool.train.api import stored_data

    cfg = data_config_from_cli(data, data_dir, data_opt, download, fallback=stored_data(src))
    result = evaluate_checkpoint(src, cfg, split=split, limit=limit, batch_size=batch_size,
                                 device=device, precision=precision, workers=workers)
    where = f" in {result['data_path']}" if result.get("data_path") else ""
    console.print(f"{src} on {cfg.name} {result['split']} ({result['images']} images{where}): top-1 "
                  f"{result['top1']:.2%}  top-5 {result['top5']:.2%}  loss {result['loss']:.4f}",
                  highlight=False)
    emit(src, result, json_)


@handle_errors
def recalibrate_bn_cmd(
    src: SrcArg,
    output: OutOpt,
    samples: Annotated[int, typer.Option("--samples", help="Training images to average the statistics over "
                                         "(the first N of the split, no augmentation).")] = 2048,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    download: DownloadOpt = False,
    batch_size: BatchSizeEvalOpt = 256,
    device: DeviceOpt = "auto",
    force: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Re-estimate BatchNorm running statistics (e.g. of a net just grown); nothing else changes.

    Every BatchNorm layer averages its statistics over --samples training images
    (cumulatively, not with momentum); every other tensor is written bit-identical.
    The data set defaults to the one stored in SRC.

    Example: mgtool recalibrate-bn grown.safetensors -o grown.bn.safetensors --samples 2048
    """
    from mgtool.recalibrate import recalibrate_bn
    from mgtool.train.api import stored_data

    cfg = data_config_from_cli(data, data_dir, data_opt, download, fallback=stored_data(src))
    result = recalibrate_bn(src, output, cfg, samples=samples, batch_size=batch_size, device=device, force=force)
    console.print(f"recalibrated {result.layers} BatchNorm layers of {src} on {result.samples} {cfg.name} "
                  f"training images -> {result.path}", highlight=False, markup=False)
    emit(result.path, result.to_dict(), json_)


def register(app: typer.Typer) -> None:
    app.command("recalibrate-bn")(recalibrate_bn_cmd)
    app.command("train-small")(train_small_cmd)
    app.command("finetune")(finetune_cmd)
    app.command("eval")(eval_cmd)
