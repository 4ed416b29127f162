"""``run`` (a recipe's stages) and ``demo`` (the pipeline on real Fashion-MNIST)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from mgtool.cli.common import console, emit, handle_errors

OutDirOpt = Annotated[Path | None, typer.Option(
    "-o", "--output", help="Folder for the stages' files. [default: `runs/<recipe name>`]", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace files in DIR that this pipeline did not write.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or epoch lines.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print summary.json's content on stdout instead of its path.")]


def _log(message: str) -> None:
    """A pipeline line, printed literally (paths and names may hold ``[...]``)."""
    console.print(Text(message), soft_wrap=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _test_set(which: str) -> str:
    return "full test split" if which == "full" else "test split used in training"


def summary_table(summary) -> Table:
    table = Table(title=Text(f"{summary.recipe}: accuracy and training FLOPs per stage"), title_justify="left",
                  box=box.SIMPLE_HEAD)
    # Every cell folds rather than being cut with "…" in a narrow terminal (80 columns).
    for column, justify in (("stage", "left"), ("net", "left"), ("top-1", "right"), ("FLOPs spent", "right"),
                            ("FLOPs Norm", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in summary.rows:
        norm = "given" if row["stage"] == "net1" else f"{row['flops_norm']:.2f}X"
        table.add_row(Text(row["label"]), Text(row["arch"]), _pct(row["top1"]), f"{row['flops_spent']:.3g}", norm)
    table.caption = Text(
        "FLOPs Norm = training FLOPs charged so far (net 1 given, not charged, as in the paper) / "
        f"{summary.reference_flops:.3g}, the large net trained from scratch for the full "
        f"{summary.extra['reference_epochs']}-epoch schedule (1.00X). fvcore multiply-adds, training = 3x forward. "
        f"Accuracy on the {_test_set(summary.extra['eval_test_set'])}." + _growth_note(summary),
        justify="left")
    return table


def _growth_note(summary) -> str:
    """Where the per-epoch accuracy after growth is drawn, if it was."""
    plot = summary.extra.get("after_growth_plot")
    return f" Top-1 per epoch after growth: {plot}." if plot else ""


def _finish(summary, json_: bool) -> None:
    console.print(summary_table(summary))
    ran = sum(s.status in ("ran", "resumed") for s in summary.stages)
    console.print(f"{ran} stage(s) ran, {len(summary.stages) - ran} reused; {summary.wall_s:.1f}s; "
                  f"outputs in {summary.out_dir}", highlight=False)
    emit(summary.path, summary.to_dict(), json_)


@handle_errors
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).", show_default=False)],
    output: OutDirOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe value, KEY=VALUE with a dotted key (repeatable), "
        "e.g. --set finetune.train.epochs=5.", show_default=False, metavar="KEY=VALUE")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace files in DIR that this pipeline did not write "
                                        "(or that changed since it wrote them), and adopt a pipeline.json it "
                                        "did not write.")] = False,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run a recipe: net 1 (train or convert), net 2, fuse, recalibrate BatchNorm, finetune, export, eval.

    The whole recipe is checked first. Each stage writes its own file in DIR; a rerun
    skips stages whose inputs and settings are unchanged and resumes an interrupted
    training stage; one process at a time per DIR. Ends with a table of every
    stage's accuracy and training FLOPs (FLOPs Norm against the large net from scratch)
    and writes DIR/summary.json (its path on stdout), with accuracy at growth (as fused
    and recalibrated) and per epoch after it, drawn to DIR/after-growth.png.

    Example: mgtool run recipes/fashion-mnist-cpu.yaml -o runs/fmnist --set finetune.train.epochs=3
    """
    from mgtool.pipeline import run_pipeline
    from mgtool.recipe import load_recipe

    r = load_recipe(recipe, list(set_ or []))
    out = output or Path("runs") / r.name
    command = " ".join(["mgtool run", shlex.quote(str(recipe)), "-o", shlex.quote(str(out)),
                        *(f"--set {shlex.quote(s)}" for s in set_ or [])])
    summary = run_pipeline(r, out, command=command, force=force, quiet=quiet, log=_log)
    _finish(summary, json_)


@handle_errors
def demo_cmd(
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Folder for the demo's files. [default: runs/demo, with --quick runs/demo-quick]",
        show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A few hundred images, one epoch per stage (CI).")] = False,
    data: Annotated[str, typer.Option(
        "--data", help="fashion-mnist, or synthetic (random images of the same shape; for tests only).",
    )] = "fashion-mnist",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Folder with Fashion-MNIST's idx files (used instead of the automatic search).",
        show_default=False)] = None,
    download: Annotated[bool, typer.Option(
        "--download/--no-download", help="Download Fashion-MNIST with torchvision if it is found nowhere.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(
        "--seed", help="Draws the training subset, both small nets, the new tiles, the fine-tune and the "
        "reference net.")] = 0,
    threads: Annotated[int, typer.Option(
        "--threads", help="torch CPU threads (0: torch's default). One is the robust choice for these small "
        "convolutions: more gain little and are much slower on a busy machine.")] = 1,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Grow two small WRNs into a wide one on real Fashion-MNIST, in minutes on a CPU.

    Trains net 1 and net 2 (WRN-10 at widen 0.5), fuses them into a WRN-10-1, re-estimates
    its BatchNorm statistics, fine-tunes it, and trains a WRN-10-1 from scratch with the
    same FLOPs on a complete schedule; ends with a table. The
    data is found automatically (Debian's dataset-fashion-mnist, ./data, or a download).

    Example: mgtool demo -o runs/demo
    """
    from mgtool.demo import run_demo

    output = output or Path("runs/demo-quick" if quick else "runs/demo")
    summary = run_demo(output, quick=quick, data=data, data_dir=data_dir, download=download, device=device,
                       threads=threads or None, seed=seed, force=force, quiet=quiet, log=_log)
    _finish(summary, json_)
    console.print(next_steps(summary.out_dir, summary.extra), soft_wrap=True)


def next_steps(out_dir: Path | str, extra: dict | None = None) -> str:
    """What to do with the demo's files: load, export, evaluate (commands that work as shown). The eval
    line reads the same test images as the table: the full split when the table used it."""
    out = Path(out_dir)
    q = shlex.quote
    data = (extra or {}).get("eval_data") or {}
    full = (extra or {}).get("eval_test_set") == "full" and data.get("data_dir")
    evaluate = (f"  mgtool eval {q(str(out / 'final.safetensors'))} --data {q(data['name'])} --data-dir "
                f"{q(data['data_dir'])} --json   # the table's top-1: the full 10,000-image test split"
                if full else f"  mgtool eval {q(str(out / 'final.safetensors'))} --json   # on the stored data set, "
                "as the table")
    return "\n".join([
        "next:",
        f"  python -c \"import mgtool; print(mgtool.load({str(out / 'final.safetensors')!r}))\""
        "   # the grown net as a torch module",
        evaluate,
        f"  mgtool info {q(str(out / 'grown.safetensors'))}   # architecture, template banks, FLOPs",
        f"  mgtool export {q(str(out / 'finetuned.safetensors'))} -o {q(str(out / 'mine.safetensors'))}"
        "   # template-mixing -> plain weights (final.safetensors is this, done by the demo)",
    ])


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)
