"""The per-class memory bank of negative keys for the pixel contrast (U2PL's ``memobank``)."""
from __future__ import annotations

import torch


class MemoryBank:
    """One first-in-first-out queue of teacher representations [<= capacity_k, D] per class,
    stored in float16 (the keys only enter cosine similarities) on ``device``.

    A step rarely needs more new keys per class than the queue holds; above that, a random
    subset is kept (U2PL keeps the last rows of the batch, i.e. the bottom of its last
    images). Under torchrun every rank pushes every rank's keys, so the banks stay equal."""

    def __init__(self, capacities: list[int], dim: int, device="cpu"):
        self.capacities = list(capacities)
        self.queues = [torch.zeros(0, dim, dtype=torch.float16, device=device) for _ in capacities]

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.queues[k]

    def __len__(self):
        return len(self.queues)

    @torch.no_grad()
    def push(self, keys: list[torch.Tensor], generator: torch.Generator | None = None) -> None:
        """Append each class's new keys [N_k, D] (oldest rows fall out past the capacity)."""
        capped = []
        for k, new in enumerate(keys):
            if len(new) > self.capacities[k]:
                new = new[torch.randperm(len(new), generator=generator)[:self.capacities[k]].to(new.device)]
            capped.append(new.detach().to(torch.float16))
        for k, new in enumerate(_gather(capped)):
            queue = torch.cat([self.queues[k], new.to(self.queues[k].device)])
            self.queues[k] = queue[-self.capacities[k]:]

    def state_dict(self) -> dict:
        return {"capacities": self.capacities, "queues": [q.cpu() for q in self.queues]}

    def load_state_dict(self, state: dict) -> None:
        device = self.queues[0].device
        self.capacities = list(state["capacities"])
        self.queues = [q.to(device) for q in state["queues"]]


def _gather(keys: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's keys per class, concatenated in rank order (as they are without torchrun)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [k.cpu() for k in keys])
    return [torch.cat([rank[k] for rank in everyone]) for k in range(len(keys))]
