"""The collaborative bandit dynamics of `collab.bandit` (after Li et al., "Collaborative Learning in
General Graphs with Limited Memorization"), simulated for all agents at once with numpy.

Every round, for every agent:
1. share: its walker takes `walk_steps` Metropolis-Hastings steps (uniform stationary distribution)
   and meets the agent it stands on; an honest peer shares its last (arm, reward), a corrupted one a
   falsified (worst arm, reward 1). A rewarded suggestion from another agent is memorized;
2. choose: with probability `explore` a uniform random arm, else a uniform pick among the memorized
   suggestions (a random arm while memory is empty);
3. pull: a Bernoulli reward of the arm's mean; a rewarded arm is adopted, i.e. memorized too.
Memory is a ring buffer of at most `memory` suggestions: the oldest is forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memeval_plugins.collab.graphs import Adjacency, metropolis_step


@dataclass
class Memory:
    """Bounded suggestion buffers of all agents (arm ids, -1 empty), oldest overwritten first."""

    slots: np.ndarray  # (agents, capacity)
    size: np.ndarray   # (agents,)
    head: np.ndarray   # (agents,) next slot to write

    @classmethod
    def empty(cls, agents: int, capacity: int) -> Memory:
        return cls(np.full((agents, capacity), -1, dtype=np.int64), np.zeros(agents, dtype=np.int64),
                   np.zeros(agents, dtype=np.int64))

    @property
    def capacity(self) -> int:
        return self.slots.shape[1]

    def push(self, agents: np.ndarray, arms: np.ndarray) -> None:
        """Memorize arms[k] for agents[k] (agents distinct within one call)."""
        self.slots[agents, self.head[agents]] = arms
        self.head[agents] = (self.head[agents] + 1) % self.capacity
        self.size[agents] = np.minimum(self.size[agents] + 1, self.capacity)

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        """A uniform memorized suggestion per agent (-1 where memory is empty)."""
        slot = np.floor(rng.random(self.size.size) * np.maximum(self.size, 1)).astype(np.int64)
        # The filled slots of a ring buffer are its first `size` until it wraps, then all of them.
        return np.where(self.size > 0, self.slots[np.arange(self.size.size), slot], -1)


@dataclass
class Trajectory:
    best_fraction: list[float] = field(default_factory=list)  # per round, among honest agents
    max_memory: int = 0                                        # the fullest buffer ever seen


def simulate(adjacency: Adjacency, means: np.ndarray, corrupted: np.ndarray, memory: int, rounds: int,
             explore: float, walk_steps: int, rng: np.random.Generator) -> Trajectory:
    """Run the dynamics; `corrupted` is a boolean mask over agents."""
    agents = adjacency.degree.size
    arms = means.size
    best, worst = int(np.argmax(means)), int(np.argmin(means))
    honest = np.flatnonzero(~corrupted)
    buffers = Memory.empty(agents, memory)
    walker = np.arange(agents)
    last_arm = rng.integers(0, arms, size=agents)
    last_reward = np.zeros(agents, dtype=bool)
    trajectory = Trajectory()
    for _ in range(rounds):
        for _ in range(walk_steps):
            walker = metropolis_step(adjacency, walker, rng)
        shared_arm = np.where(corrupted[walker], worst, last_arm[walker])
        shared_reward = corrupted[walker] | last_reward[walker]
        learn = honest[shared_reward[honest] & (walker[honest] != honest)]
        buffers.push(learn, shared_arm[learn])
        picked = buffers.pick(rng)
        random_arm = rng.integers(0, arms, size=agents)
        choice = np.where((picked < 0) | (rng.random(agents) < explore), random_arm, picked)
        reward = rng.random(agents) < means[choice]
        last_arm, last_reward = choice, reward
        adopted = honest[reward[honest]]
        buffers.push(adopted, choice[adopted])
        trajectory.best_fraction.append(float(np.mean(choice[honest] == best)))
        trajectory.max_memory = max(trajectory.max_memory, int(buffers.size.max()),
                                    int((buffers.slots >= 0).sum(axis=1).max()))
    return trajectory
