"""``plabel demo``: seed 000 end to end on synthetic data (the pipeline
``configs/pipelines/evolving_seqmerge_small.py``, which needs the ``seqmerge``, ``cam`` and
``mmseg`` plugins). ``PLABEL_DISABLE_PLUGINS=demo`` leaves the command out.
"""
from plabel_kit import hookimpl


@hookimpl
def register_commands(cli):
    from .commands import demo

    cli.add_command(demo)
