"""``train-small``, ``finetune`` and ``eval``: thin wrappers over ``mgtool.train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

SrcArg = Annotated[Path, typer.Argument(help="Input mgtool checkpoint.", show_default=False)]
EpochsOpt = Annotated[int, typer.Option(
    "--epochs", help="Epochs of the schedule (train-small: 0 writes the fresh, untrained net).",
    show_default=False)]
BudgetOpt = Annotated[float, typer.Option(
    "--budget", help="Stop after this fraction of the schedule's training FLOPs (the learning rate "
    "follows the full schedule, cut off there).")]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", help="Global batch size (split over DDP processes). (default: 128; imagenet 256)",
    show_default=False)]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate. (default: 0.1)",
                                                show_default=False)]
WdOpt = Annotated[float | None, typer.Option(
    "--wd", help="Weight decay. (default: 5e-4; imagenet 1e-4)", show_default=False)]
MomentumOpt = Annotated[float | None, typer.Option("--momentum", help="SGD momentum. (default: 0.9)",
                                                      show_default=False)]
NesterovOpt = Annotated[bool | None, typer.Option("--nesterov/--no-nesterov",
                                                     help="Nesterov momentum. (default: on)",
                                                     show_default=False)]
ScheduleOpt = Annotated[str | None, typer.Option(
    "--schedule", help="cosine, step or constant. (default: cosine; imagenet step)", show_default=False)]
MilestonesOpt = Annotated[str | None, typer.Option(
    "--milestones", help="Epochs where the step schedule divides the lr by 10, e.g. 30,60,80.",
    show_default=False)]
WarmupOpt = Annotated[float | None, typer.Option(
    "--warmup", help="Linear warm-up epochs. (default: 1, or 5% of a shorter run; imagenet 0)",
    show_default=False)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA), fp32 or bf16.")]
ChannelsLastOpt = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="channels_last memory format. (default: on for CUDA)",
    show_default=False)]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
LoaderOpt = Annotated[str, typer.Option(
    "--loader", help="auto, device (whole uint8 set on the device) or dataloader (worker processes).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes. "
                                                   "(default: min(8, CPUs))", show_default=False)]
KeepEveryOpt = Annotated[int, typer.Option(
    "--keep-every", help="Also keep OUT-stem.epochNNN.safetensors every N epochs (0: never).")]
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


def _milestones(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated epochs, got {text!r}",
                                 param_hint="--milestones") from None


def _check_schedule(schedule: str | None) -> None:
    from mgtool.train.schedule import SCHEDULES

    if schedule is not None and schedule not in SCHEDULES:
        raise usage_error(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _runtime(device: str, precision: str, channels_last: bool | None, compile_: bool, loader: str,
             workers: int | None, keep_every: int, quiet: bool):
    from mgtool.train import Runtime

    return Runtime(device=device, precision=precision, channels_last=channels_last, compile=compile_,
                   loader=loader, workers=workers, keep_every=keep_every, quiet=quiet)


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
def train_small_cmd(
    output: OutOpt,
    epochs: EpochsOpt,
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
    budget: BudgetOpt = 1.0,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    wd: WdOpt = None,
    momentum: MomentumOpt = None,
    nesterov: NesterovOpt = None,
    schedule: ScheduleOpt = None,
    milestones: MilestonesOpt = None,
    warmup: WarmupOpt = None,
    seed: SmallSeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = False,
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
    _check_schedule(schedule)
    source = like or init_from
    cfg = data_config_from_cli(data, data_dir, data_opt, download,
                               fallback=stored_data(source) if source else None)
    if like is not None:
        seed = like_seed(like, seed)
    train = train_config(cfg.name, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=wd,
                         momentum=momentum, nesterov=nesterov, schedule=schedule,
                         milestones=_milestones(milestones), warmup_epochs=warmup, budget=budget,
                         seed=seed if seed is not None else 0)
    runtime = _runtime(device, precision, channels_last, compile_, loader, workers, keep_every, quiet)
    result = train_small(output, cfg, train, runtime, arch=arch, width=width, options=parse_options(opt),
                         num_classes=num_classes, in_chans=in_chans,
                         templates=2 if templates is None else templates,
                         share=share or "pairs", like=like, init_from=init_from, resume=resume,
                         force=force)
    _finish(result, quiet, json_)


@handle_errors
def finetune_cmd(
    src: SrcArg,
    output: OutOpt,
    epochs: EpochsOpt,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    download: DownloadOpt = False,
    budget: BudgetOpt = 1.0,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    wd: WdOpt = None,
    momentum: MomentumOpt = None,
    nesterov: NesterovOpt = None,
    schedule: ScheduleOpt = None,
    milestones: MilestonesOpt = None,
    warmup: WarmupOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of data order and augmentation.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = False,
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

    _check_schedule(schedule)
    cfg = data_config_from_cli(data, data_dir, data_opt, download, fallback=stored_data(src))
    train = train_config(cfg.name, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=wd,
                         momentum=momentum, nesterov=nesterov, schedule=schedule,
                         milestones=_milestones(milestones), warmup_epochs=warmup, budget=budget, seed=seed)
    runtime = _runtime(device, precision, channels_last, compile_, loader, workers, keep_every, quiet)
    result = finetune(src, output, cfg, train, runtime, resume=resume, force=force)
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
    console.print(f"{src} on {cfg.name} {result['split']} ({result['samples']} images): top-1 "
                  f"{result['top1']:.2%}  top-5 {result['top5']:.2%}  loss {result['loss']:.4f}",
                  highlight=False)
    emit(src, result, json_)


def register(app: typer.Typer) -> None:
    app.command("train-small")(train_small_cmd)
    app.command("finetune")(finetune_cmd)
    app.command("eval")(eval_cmd)
