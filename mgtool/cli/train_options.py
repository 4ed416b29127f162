"""The training options of ``train-small`` and ``finetune``, made from ``TrainSettings``.

``with_train_settings`` adds one option per field of ``mgtool.train.settings.TrainSettings``
(flag and help from the field's metadata, defaults from ``default_help``) to a command,
and hands the command one ``train: TrainSettings`` instead. A recipe's ``train:``
sections are parsed into the same dataclass, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from mgtool.train.settings import TrainSettings, default_help


def _parse_milestones(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated epochs such as 30,60,80, got {text!r}",
                                 param_hint="--milestones") from None


def _option_type(field: dataclasses.Field, hints: dict[str, Any]) -> Any:
    """The CLI type of a field: its non-None type; tuples are typed as text and parsed."""
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return str if typing.get_origin(base) is tuple else base


def train_parameters(*, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    params = []
    hints = typing.get_type_hints(TrainSettings)
    for f in dataclasses.fields(TrainSettings):
        if f.name in skip:
            continue
        meta = f.metadata
        option = typer.Option(meta["flag"], help=meta["help"] + default_help(f.name), show_default=False,
                               metavar=meta.get("metavar"))
        annotation = Annotated[_option_type(f, hints) | None, option]
        params.append(inspect.Parameter(f"train_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    return params


def with_train_settings(*, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator: the command gets ``train: TrainSettings`` built from the generated options."""

    def wrap(func: Callable) -> Callable:
        sig = inspect.signature(func)
        # Resolve the command's own (string) annotations here: typer reads the wrapper's.
        kept = [p.replace(annotation=eval(p.annotation, func.__globals__) if isinstance(p.annotation, str)
                          else p.annotation)
                for p in sig.parameters.values() if p.name != "train"]
        generated = train_parameters(skip=skip)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {p.name.removeprefix("train_"): kwargs.pop(p.name, None) for p in generated}
            values["milestones"] = _parse_milestones(values.get("milestones"))
            kwargs["train"] = TrainSettings(**{k: v for k, v in values.items() if k not in skip})
            return func(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=[*kept, *generated])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in [*kept, *generated]}
        return wrapper

    return wrap
