"""`collab.bandit`: agents on a graph learn the best arm of a bandit from a bounded memory of
suggestions shared by random walks, while some agents share falsified experience."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from memeval.api import (
    Context,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    Series,
    Table,
    mean_metric,
    rate_metric,
)
from memeval_plugins.collab.graphs import (
    Adjacency,
    Edgeless,
    ErdosRenyi,
    GraphFile,
    GraphSpec,
    build_graph,
    connected,
)
from memeval_plugins.collab.simulation import simulate


class BanditParams(Params):
    graph: GraphSpec = Field(default_factory=ErdosRenyi, description="the communication graph")
    arms: list[float] = Field(default_factory=lambda: [0.9, 0.7, 0.6, 0.5, 0.4], min_length=2,
                              description="Bernoulli reward mean of each arm; the largest must be unique")
    memory: int = Field(3, ge=1, description="suggestions an agent can memorize (its buffer's bound)")
    rounds: int = Field(300, ge=1, description="rounds simulated")
    explore: float = Field(0.01, ge=0, lt=1, description="probability of pulling a uniform random arm")
    walk_steps: int = Field(1, ge=1, description="Metropolis-Hastings steps of each walker per round")
    corruption: list[float] = Field(default_factory=lambda: [0.0], min_length=1,
                                    description="fractions of corrupted agents to simulate, increasing")
    repeats: int = Field(5, ge=1, description="independent runs (graph, corrupted agents, rewards) per level")
    target: float = Field(0.95, gt=0, le=1, description="share of honest agents on the best arm whose first "
                                                        "round is the time to target")
    breakdown_below: float = Field(0.5, gt=0, le=1, description="final share below which a corruption "
                                                                "level counts as broken down")
    final_window: int = Field(10, ge=1, description="last rounds averaged into the final share")
    isolated_baseline: bool = Field(True, description="also run the same agents with no graph at all "
                                                      "(each learns from its own memory only)")

    @field_validator("arms")
    @classmethod
    def _means(cls, arms: list[float]) -> list[float]:
        if any(not 0 <= m <= 1 for m in arms):
            raise ValueError(f"arm means must lie in [0, 1], got {arms}")
        if sorted(arms)[-1] == sorted(arms)[-2]:
            raise ValueError(f"the best arm must be unique, got {arms}")
        return arms

    @field_validator("corruption")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        if any(not 0 <= x < 1 for x in levels):
            raise ValueError(f"corruption fractions must lie in [0, 1), got {levels}")
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(f"corruption fractions must be strictly increasing, got {levels}")
        return levels


@dataclass(frozen=True)
class Run:
    setting: str  # "graph" or "isolated"
    level: int
    corruption: float
    repeat: int
    graph_path: Path | None


class CollaborativeBandit(Method):
    """Collaborative learning in general graphs with limited memorization (Li et al.).

    Agents on a graph (Erdős-Rényi, Barabási-Albert or a graph file) each hold a buffer of at most
    `memory` suggested arms. Every round each agent's walker takes Metropolis-Hastings steps (whose
    stationary distribution is uniform over agents, whatever the degrees) and the agent memorizes
    the peer's last arm if it was rewarded; it then pulls an arm drawn from its memory and
    memorizes it when rewarded. Corrupted agents share the worst arm as rewarded. Measured over
    honest agents: the share on the best arm per round, the final share (mean of the last
    `final_window` rounds), the first round it reaches `target`, and the smallest corruption level
    whose final share falls below `breakdown_below`. The same agents with no graph at all are the
    baseline. Needs no model and no dataset.
    """

    name = "collab.bandit"
    summary = "honest agents on the best arm, time to 95% and break-down corruption of a collaborative bandit"
    Params = BanditParams
    needs_dataset = False
    metrics = (
        MetricSpec("best_arm_fraction", "final share of honest agents on the best arm (lowest corruption level)",
                   None, per_sample="final_fraction"),
        MetricSpec("reached_target_rate", "share of runs (lowest corruption level) reaching the target share", None),
        MetricSpec("time_to_target", "mean first round at the target share, over the runs that reach it", None),
        MetricSpec("breakdown_corruption", "smallest corruption fraction whose mean final share is below "
                                           "breakdown_below (NaN: none of those simulated)", None),
        MetricSpec("isolated_best_arm_fraction", "final share on the best arm of the same agents without a graph",
                   None),
        MetricSpec("max_memory_used", "the most suggestions any agent held at once (never above memory)", None),
    )
    records = {"setting": "graph, or isolated (no graph)", "corruption": "fraction of corrupted agents",
               "repeat": "run index", "agents": "agents in the graph", "edges": "edges in the graph",
               "connected": "whether the graph is connected", "corrupted_agents": "corrupted agents",
               "final_fraction": "share of honest agents on the best arm, mean of the last rounds",
               "time_to_target": "first round (1-based) at the target share; null: never",
               "max_memory": "fullest buffer seen", "curve": "share on the best arm per round"}

    @classmethod
    def produced_metrics(cls, params: BanditParams) -> list[str]:
        return [m for m in cls.metric_names() if m != "isolated_best_arm_fraction" or params.isolated_baseline]

    @classmethod
    def check_references(cls, params: BanditParams, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        spec = params.graph
        if isinstance(spec, GraphFile) and not suite.resolve_path(spec.path).is_file():
            return [(("params", "graph", "path"), f"graph file {str(suite.resolve_path(spec.path))!r} does not exist")]
        return []

    def prepare(self, samples: Any, context: Context) -> list[Run]:
        spec = self.params.graph
        path = context.resolve_path(spec.path) if isinstance(spec, GraphFile) else None
        runs = [Run("graph", level, corruption, repeat, path) for level, corruption in enumerate(self.params.corruption)
                for repeat in range(self.params.repeats)]
        if self.params.isolated_baseline:
            runs += [Run("isolated", 0, 0.0, repeat, None) for repeat in range(self.params.repeats)]
        return runs

    def map(self, batch: list[Run], context: Context) -> list[dict[str, Any]]:
        return [self._simulate(run, context) for run in batch]

    def _simulate(self, run: Run, context: Context) -> dict[str, Any]:
        p = self.params
        graph = build_graph(p.graph, seed=context.seed * 1_000_003 + run.repeat, path=run.graph_path)
        if run.setting == "isolated":
            graph = build_graph(Edgeless(agents=graph.number_of_nodes()), seed=0)
        agents = graph.number_of_nodes()
        # One stream per repeat, shared by every level: the corrupted sets are nested (the first
        # round(level * agents) of one permutation), so levels differ only by the corruption.
        rng = np.random.default_rng([context.seed, run.repeat])
        corrupted = np.zeros(agents, dtype=bool)
        corrupted[rng.permutation(agents)[:round(run.corruption * agents)]] = True
        if corrupted.all():
            raise ValueError(f"corruption {run.corruption} leaves no honest agent among {agents}")
        curve = simulate(Adjacency.of(graph), np.asarray(p.arms), corrupted, p.memory, p.rounds, p.explore,
                         p.walk_steps, rng)
        fractions = np.asarray(curve.best_fraction)
        reached = np.flatnonzero(fractions >= p.target)
        return {"id": f"{run.setting}-c{run.corruption:g}-r{run.repeat}", "setting": run.setting,
                "corruption": run.corruption, "repeat": run.repeat, "agents": agents,
                "edges": graph.number_of_edges(), "connected": connected(graph),
                "corrupted_agents": int(corrupted.sum()),
                "final_fraction": float(fractions[-p.final_window:].mean()),
                "time_to_target": int(reached[0]) + 1 if reached.size else None,
                "max_memory": curve.max_memory, "curve": [round(float(f), 4) for f in fractions]}

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        p = self.params
        graph = [r for r in records if r["setting"] == "graph"]
        if not all(r["connected"] for r in graph):
            context.warn("the graph is not connected: suggestions never cross between its components")
        first = [r for r in graph if r["corruption"] == p.corruption[0]]
        times = [r["time_to_target"] for r in first if r["time_to_target"] is not None]
        metrics = [mean_metric("best_arm_fraction", [r["final_fraction"] for r in first], seed=context.seed),
                   rate_metric("reached_target_rate", len(times), len(first)),
                   mean_metric("time_to_target", times, seed=context.seed)]
        finals = level_finals(graph)
        broken = [level for level, values in finals.items() if np.mean(values) < p.breakdown_below]
        if not broken:
            context.warn(f"no corruption level simulated brings the final share below {p.breakdown_below}")
        metrics.append(Metric("breakdown_corruption", min(broken) if broken else float("nan"), n=len(finals)))
        isolated = [r["final_fraction"] for r in records if r["setting"] == "isolated"]
        if isolated:
            metrics.append(mean_metric("isolated_best_arm_fraction", isolated, seed=context.seed))
        metrics.append(Metric("max_memory_used", max(r["max_memory"] for r in records), n=len(records)))
        context.artifact("curves", {setting: mean_curves([r for r in records if r["setting"] == setting])
                                    for setting in ("graph", "isolated")})
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        curves = evaluation.artifacts.get("curves", {})
        series = [Series(f"corruption {level}", list(range(1, len(curve) + 1)), curve)
                  for level, curve in curves.get("graph", {}).items()]
        series += [Series("isolated agents", list(range(1, len(curve) + 1)), curve)
                   for curve in curves.get("isolated", {}).values()]
        blocks: list[Any] = []
        if series:
            blocks.append(LinePlot("Honest agents on the best arm (mean over runs)", "round", "share",
                                   [s for s in series if s.x], y_range=(0.0, 1.0)))
        graph = [r for r in records if r["setting"] == "graph"]
        finals = level_finals(graph)
        if len(finals) > 1:
            levels = sorted(finals)
            blocks.append(LinePlot("Final share on the best arm by corruption", "fraction of corrupted agents",
                                   "final share", [Series("mean (band: lowest to highest run)", levels,
                                                          [float(np.mean(finals[x])) for x in levels],
                                                          [float(min(finals[x])) for x in levels],
                                                          [float(max(finals[x])) for x in levels])],
                                   y_range=(0.0, 1.0), markers=True))
        rows = []
        for level in sorted(finals):
            times = [r["time_to_target"] for r in graph if r["corruption"] == level]
            reached = [t for t in times if t is not None]
            rows.append([level, round(float(np.mean(finals[level])), 3), f"{len(reached)}/{len(times)}",
                         float(np.median(reached)) if reached else None])
        blocks.append(Table(["corruption", "final share on the best arm", "runs reaching the target",
                             "median rounds to the target"], rows, title="By corruption level"))
        return [Section("Collaborative bandit", blocks)]


def level_finals(records: list[dict[str, Any]]) -> dict[float, list[float]]:
    finals: dict[float, list[float]] = {}
    for r in records:
        finals.setdefault(r["corruption"], []).append(r["final_fraction"])
    return finals


def mean_curves(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per corruption level, the share on the best arm per round averaged over runs."""
    grouped: dict[float, list[list[float]]] = {}
    for r in records:
        grouped.setdefault(r["corruption"], []).append(r["curve"])
    return {f"{level:g}": np.mean(np.asarray(curves), axis=0).round(4).tolist()
            for level, curves in sorted(grouped.items())}
