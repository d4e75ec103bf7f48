"""Scoped random number generators: library code never moves the caller's global torch RNG stream.

Where an API takes a generator (``randperm``, ``randn``, ``rand``, DataLoader samplers) the code passes a
local ``torch.Generator``. Code we do not own draws from the global RNG (timm / ``nn`` module init, dropout and
drop-path inside timm blocks, torchvision's random transforms); it runs under ``seeded(seed)``, which draws
exactly what it would have drawn after ``torch.manual_seed(seed)`` and then gives the caller back its state.

CUDA generators are forked and seeded only when CUDA is initialised on entry: forking them would otherwise
initialise CUDA (which a DataLoader worker forked from the main process must never do). A block that draws
on the GPU therefore runs after the device is in use (a tensor or module moved there), as every site does."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")


def _devices() -> list[int]:
    """The CUDA devices whose generators a scope forks: all of them once CUDA is initialised (as
    ``torch.manual_seed`` seeds all), none before (``is_initialized`` is also False in a forked worker)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _seed(seed: int, devices: list[int]) -> None:
    # not torch.manual_seed: before CUDA is initialised it queues a seeding of every CUDA generator for
    # whenever CUDA starts, which would reach the caller's stream after the scope has ended
    torch.default_generator.manual_seed(seed)
    if devices:
        torch.cuda.manual_seed_all(seed)


class _State:
    """A snapshot of the CPU generator and the given CUDA generators."""

    def __init__(self, devices: list[int]) -> None:
        self.devices = devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(state, d)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block on the global RNG seeded with ``seed`` (CPU, and CUDA when initialised): the same draws
    as after ``torch.manual_seed(seed)``. The caller's RNG state is restored on exit, also on error."""
    devices = _devices()
    with torch.random.fork_rng(devices=devices):
        _seed(seed, devices)
        yield


def seeded_iter(seed: int, iterable: Iterable[T]) -> Iterator[T]:
    """Iterate ``iterable`` on a private RNG stream seeded with ``seed``: ``iter()`` and every ``next()`` draw
    what they would have drawn after ``torch.manual_seed(seed)`` (e.g. a DataLoader's shuffle and the random
    crops of a whole epoch), while the code consuming each item runs on the caller's untouched stream.
    A plain ``with seeded(...)`` around a generator body would instead leak its stream to the consumer
    between items, and restore the caller's state only whenever the generator happens to be closed."""
    own: _State | None = None
    it: Iterator[T] | None = None
    devices: list[int] = []
    while True:
        if own is None:
            devices = _devices()    # decided when iteration starts: the consumer may have moved to CUDA by then
        caller = _State(devices)
        try:
            if own is None:
                _seed(seed, devices)
                it = iter(iterable)
            else:
                own.restore()
            try:
                item = next(it)
            except StopIteration:
                return
            own = _State(devices)
        finally:
            caller.restore()
        yield item
