"""A test plugin (`-p ray_crash_plugin`): `test.crashing_discoverable` is discoverable extraction
whose worker process dies once, mid-run, at the third batch it maps (a flag file remembers)."""

from __future__ import annotations

import os
from pathlib import Path

from memeval.api import Registry, hookimpl
from memeval_plugins.extraction.discoverable import Discoverable, DiscoverableParams


class CrashParams(DiscoverableParams):
    crash_flag: str
    driver_pid: int  # the driver replays cached batches through `map` too: it must not die


class CrashingDiscoverable(Discoverable):
    name = "test.crashing_discoverable"
    Params = CrashParams

    mapped = 0  # batches this process has mapped

    def map(self, batch, context):
        if os.getpid() == self.params.driver_pid:
            return super().map(batch, context)
        CrashingDiscoverable.mapped += 1
        flag = Path(self.params.crash_flag)
        if CrashingDiscoverable.mapped == 3 and not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)  # the actor's process dies as a killed one does: no cleanup, no exception
        return super().map(batch, context)


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(CrashingDiscoverable)
