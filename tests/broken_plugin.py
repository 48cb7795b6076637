"""A test plugin (loaded with `-p broken_plugin`) whose method always raises."""

from memeval import hookimpl
from memeval.api import Method, MetricSpec


class Broken(Method):
    name = "test.broken"
    requires = frozenset({"logprobs"})
    metrics = (MetricSpec("x", "never computed", None),)

    def map(self, batch, context):
        raise RuntimeError("planted failure")


@hookimpl
def memeval_register(registry):
    registry.add_method(Broken)
