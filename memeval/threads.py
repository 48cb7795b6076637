"""Torch's CPU thread count, set for a block of work."""

from __future__ import annotations


class TorchThreads:
    """Temporarily set torch's CPU thread count (tiny models run fastest on one thread)."""

    def __init__(self, threads: int | None):
        self.threads = threads
        self.saved: int | None = None

    def __enter__(self) -> None:
        import torch

        if self.threads:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.saved is not None:
            torch.set_num_threads(self.saved)
