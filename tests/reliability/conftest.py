"""The memory-graph tests' fixtures (a state dir, ingesters on the cheap embedder), shared here."""

from tests.memory_graph.conftest import layout, make_ingester  # noqa: F401  (pytest finds fixtures by name)
