"""Building blocks for ``plabel`` commands, for plugins that add commands through the
``register_commands`` hook (and for ``plabel_kit.cli`` itself, which is built from them).

- ``PlabelGroup``: a click group whose commands fail in one line: a ``PlabelError`` (or an
  OSError of a file that could not be written) becomes a ``click.ClickException``;
  ``plabel --debug`` or ``PLABEL_DEBUG=1`` prints the traceback first.
- ``data_options``: ``--data`` (CSV index or VOC root, required) and ``--split``.
- ``out_option``: ``--out``, a label set folder to write.
- ``config_option`` and ``set_option``: ``--config FILE`` and repeatable ``--set KEY=VALUE``
  (component parameters); ``parse_overrides`` turns the ``--set`` values into a dict.
- ``GroupCommandRunner``: checks and runs a pipeline's ``step='command'`` lines as
  sub-commands of a click group; ``plabel run`` hands one to ``plabel_kit.pipeline.Runner``.

A plugin's command group, for example::

    import click
    from plabel_kit import hookimpl
    from plabel_kit.commands import PlabelGroup, data_options, out_option, parse_overrides, set_option

    @click.group("boxes", cls=PlabelGroup)
    def boxes():
        "Boxes around labelled objects."

    @boxes.command()
    @data_options
    @out_option
    @set_option
    def draw(data, split, out, overrides):
        "Example: plabel boxes draw --data scenes/index.csv --out boxes --set width=2"
        params = parse_overrides(overrides)  # {"width": "2"}
        ...

    @hookimpl
    def register_commands(cli):
        cli.add_command(boxes)

Import this module, never ``plabel_kit.cli`` (the ``plabel`` program itself).
"""
from __future__ import annotations

import errno
import os
import sys
import traceback

import click

from .errors import PlabelError

__all__ = ["PlabelGroup", "data_options", "out_option", "config_option", "set_option", "parse_overrides",
           "GroupCommandRunner"]


class PlabelGroup(click.Group):
    """Turns PlabelError, and an OSError of a file the command could not write (disk full, no
    permission, read-only), into a one-line ClickException; ``plabel --debug`` (or
    ``PLABEL_DEBUG=1``) prints the traceback before it.

    Example: ``@click.group("sequence", cls=PlabelGroup)``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PlabelError as exc:
            _debug_traceback(ctx, exc)
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno not in _FILE_ERRNOS:
                raise
            _debug_traceback(ctx, exc)
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


_FILE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _debug_traceback(ctx, exc: BaseException):
    if ctx.find_root().params.get("debug") or os.environ.get("PLABEL_DEBUG"):
        traceback.print_exception(exc, file=sys.stderr)


# ---- options defined once ------------------------------------------------------------

def data_options(f):
    """``--data`` (required: a CSV index or a VOC 2012 root) and ``--split``; the command
    receives ``data`` and ``split``, for ``plabel_kit.open_dataset(data, split)``.

    Example: ``@data_options`` above ``def build(data, split, ...)``."""
    f = click.option("--split", default=None, help="Split of a VOC root (default train).")(f)
    return click.option("--data", "data", required=True, type=click.Path(),
                        help="CSV index file or VOC 2012 root folder.")(f)


#: ``--config FILE``: component parameters from an mmengine-style .py or a .json file (``config_file``)
config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                             help="Parameters from an mmengine-style .py (or .json) config; --set overrides.")
#: ``--set KEY=VALUE``, repeatable (``overrides``, a tuple of strings for ``parse_overrides``)
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Component parameter, repeatable (see `plabel components`).")
#: ``--out``: the label set folder to write (``out``)
out_option = click.option("--out", required=True, type=click.Path(file_okay=False),
                          help="Label set folder to write (resumes if it exists).")


def parse_overrides(values) -> dict:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` is a bad ``--set``.

    Example: ``parse_overrides(overrides)`` in a command decorated with ``@set_option``."""
    params = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        params[key.strip()] = value
    return params


# ---- pipeline command steps ------------------------------------------------------------

class GroupCommandRunner:
    """Checks and runs the command lines of a pipeline's ``step='command'`` stages as
    sub-commands of ``group`` (the ``plabel`` group), in this process.

    Example, in a command that runs a pipeline::

        from plabel_kit.pipeline import Runner, load_pipeline

        root = click.get_current_context().find_root().command  # the plabel group
        Runner(load_pipeline(path), data, work, commands=GroupCommandRunner(root)).run()
    """

    def __init__(self, group: click.Group, prog_name: str = "plabel"):
        self.group, self.prog_name = group, prog_name

    def check(self, args: list):
        """Raise PlabelError unless the first argument names a command of the group (and the
        second, a sub-command of a group); arguments that are not strings (not known yet)
        end the check. A component group (one with a ``kind``: ``source``, ``refine``,
        ``combine``) checks the component's name with the registry's message."""
        from .registry import did_you_mean

        group, ctx = self.group, click.Context(self.group)
        for depth, name in enumerate(args[:2]):
            if not isinstance(name, str) or name.startswith("-") or not isinstance(group, click.Group):
                break
            if getattr(group, "kind", None):  # a component group: the registry's own message
                from .plugins import get_registry

                get_registry().entry(group.kind, name)
                break
            command = group.get_command(ctx, name)
            if command is None:
                known = group.list_commands(ctx)
                shown = " ".join(args[:depth + 1])
                raise PlabelError(f"`{self.prog_name} {shown}` is not a {self.prog_name} command"
                                  f"{did_you_mean(name, known)} (commands: {', '.join(known)})")
            group = command

    def run(self, args: list[str]):
        """Run one command line; a failure is a one-line PlabelError."""
        try:
            self.group.main(args=args, prog_name=self.prog_name, standalone_mode=False)
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise PlabelError(f"`{self.prog_name} {' '.join(args)}` exited with {exc.exit_code}") from None
        except click.ClickException as exc:
            raise PlabelError(f"`{self.prog_name} {' '.join(args[:2])} ...`: {exc.format_message()}") from None
