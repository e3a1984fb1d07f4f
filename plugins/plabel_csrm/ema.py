"""The EMA teacher: a copy of the student during warm-up, then an exponential moving average.

The reference (CSRM's ``train_u2pl.py``) copies while ``epoch <= warmup_epochs``, one epoch
past the warm-up, so its first average already has decay ~0.99 and the ramp below never
runs; here the copy stops with the warm-up, as U2PL does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, warmup_steps: int, max_decay: float = 0.99) -> float:
    """Decay after optimiser step ``step`` (0-based): 0 (copy the student) during warm-up,
    then min(1 - 1 / (1 + step - warmup_steps), max_decay): 0, 1/2, 2/3, ... up to 0.99."""
    if step < warmup_steps:
        return 0.0
    return min(1.0 - 1.0 / (1.0 + step - warmup_steps), max_decay)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student, always in eval mode (running BN statistics, no dropout)."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, over parameters and floating
    buffers (BN running statistics, which the eval-mode teacher uses); integer buffers are
    copied."""
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        source = student_state[name]
        if value.is_floating_point():
            value.mul_(decay).add_(source.detach().to(value.dtype), alpha=1.0 - decay)
        else:
            value.copy_(source)
