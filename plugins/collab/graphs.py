"""Communication graphs of `collab.bandit` (through networkx) and the Metropolis-Hastings random
walk on them, whose stationary distribution is uniform over the agents on any connected graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from memeval.api import Strict, UsageError

if TYPE_CHECKING:
    import networkx as nx


class ErdosRenyi(Strict):
    kind: Literal["erdos-renyi"] = Field("erdos-renyi", description="an Erdős-Rényi G(n, p) random graph")
    agents: int = Field(100, ge=2, description="number of agents (nodes)")
    p: float = Field(0.1, gt=0, le=1, description="probability of each edge")


class BarabasiAlbert(Strict):
    kind: Literal["barabasi-albert"] = Field("barabasi-albert", description="a Barabási-Albert preferential-"
                                                                          "attachment graph")
    agents: int = Field(100, ge=3, description="number of agents (nodes)")
    m: int = Field(2, ge=1, description="edges each new node attaches with")

    @model_validator(mode="after")
    def _m_below_agents(self) -> BarabasiAlbert:
        if self.m >= self.agents:
            raise ValueError(f"m must be below agents ({self.agents}), got {self.m}")
        return self


class GraphFile(Strict):
    kind: Literal["file"] = Field("file", description="a graph read from a file by networkx")
    path: str = Field(description="an edge list (one 'u v' pair a line), .graphml, .gml or .adjlist; "
                                  "relative to the suite file")


class Edgeless(Strict):
    kind: Literal["edgeless"] = Field("edgeless", description="isolated agents, no edges")
    agents: int = Field(100, ge=1, description="number of isolated agents")


GraphSpec = Annotated[ErdosRenyi | BarabasiAlbert | GraphFile | Edgeless, Field(discriminator="kind")]

READERS = {".graphml": "read_graphml", ".gml": "read_gml", ".adjlist": "read_adjlist"}  # else an edge list


def build_graph(spec: ErdosRenyi | BarabasiAlbert | GraphFile | Edgeless, seed: int, path: Path | None = None
                ) -> nx.Graph:
    """An undirected simple graph with nodes 0..n-1 (`path`: a graph file's, resolved by the caller)."""
    import networkx as nx  # imported when used: a run that loads every plugin should not pay for it

    if isinstance(spec, ErdosRenyi):
        graph = nx.gnp_random_graph(spec.agents, spec.p, seed=seed)
    elif isinstance(spec, BarabasiAlbert):
        graph = nx.barabasi_albert_graph(spec.agents, spec.m, seed=seed)
    elif isinstance(spec, Edgeless):
        graph = nx.empty_graph(spec.agents)
    else:
        graph = read_graph(path or Path(spec.path))
    graph = nx.Graph(graph)
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    return nx.convert_node_labels_to_integers(graph, ordering="sorted" if _sortable(graph) else "default")


def read_graph(path: Path) -> nx.Graph:
    import networkx as nx

    if not path.is_file():
        raise UsageError(f"graph file {str(path)!r} does not exist")
    try:
        graph = getattr(nx, READERS.get(path.suffix.lower(), "read_edgelist"))(path)
    except Exception as exc:  # networkx raises many kinds on a malformed file
        raise UsageError(f"graph file {str(path)!r} could not be read: {exc}") from exc
    if graph.number_of_nodes() < 2:
        raise UsageError(f"graph file {str(path)!r} has {graph.number_of_nodes()} nodes; expected at least 2")
    return graph


def connected(graph: nx.Graph) -> bool:
    import networkx as nx

    return bool(nx.is_connected(graph))


def _sortable(graph: nx.Graph) -> bool:
    try:
        sorted(graph.nodes)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class Adjacency:
    """Neighbour lists in CSR form, for drawing one random neighbour per walker at once."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def of(cls, graph: nx.Graph) -> Adjacency:
        import networkx as nx

        matrix = nx.to_scipy_sparse_array(graph, nodelist=range(graph.number_of_nodes()), format="csr")
        return cls(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64))

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)


def metropolis_step(adjacency: Adjacency, position: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Metropolis-Hastings step of every walker: propose a uniform neighbour j of i, move with
    probability min(1, deg(i)/deg(j)), else stay (an isolated node always stays)."""
    degree = adjacency.degree
    if adjacency.indices.size == 0:
        return position
    own = degree[position]
    movable = own > 0
    choice = adjacency.indptr[position] + np.floor(rng.random(position.size) * np.maximum(own, 1)).astype(np.int64)
    proposal = np.where(movable, adjacency.indices[np.minimum(choice, adjacency.indices.size - 1)], position)
    accept = movable & (rng.random(position.size) < own / np.maximum(degree[proposal], 1))
    return np.where(accept, proposal, position)


def metropolis_matrix(graph: nx.Graph) -> np.ndarray:
    """The walk's transition matrix in closed form: P[i, j] = min(1/deg i, 1/deg j) on an edge,
    the rest of the row on the diagonal. Symmetric, hence doubly stochastic: uniform is stationary."""
    n = graph.number_of_nodes()
    degree = np.array([graph.degree(i) for i in range(n)], dtype=np.float64)
    matrix = np.zeros((n, n))
    for i, j in graph.edges:
        matrix[i, j] = matrix[j, i] = min(1 / degree[i], 1 / degree[j])
    matrix[np.diag_indices(n)] = 1 - matrix.sum(axis=1)
    return matrix
