"""Confirmed links between images form a graph; its connected components are the individuals.

A ``no_match`` verdict between two images that confirmed links have put in one component is a
conflict: it is reported, never resolved silently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from central.store import Decision


@dataclass(frozen=True)
class Conflict:
    """A ``no_match`` pair inside one individual, and the path of confirmed links that joins it."""

    anchor_id: str
    candidate_id: str
    individual: str
    path: list[str]


@dataclass
class Individuals:
    """Union-find over image ids; an individual is named by its earliest-linked root image."""

    parent: dict[str, str] = field(default_factory=dict)
    links: dict[str, set[str]] = field(default_factory=dict)

    def find(self, image: str) -> str:
        """The id that names ``image``'s individual (itself when unlinked)."""
        root = image
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while image != root:  # path compression
            self.parent[image], image = root, self.parent[image]
        return root

    def link(self, a: str, b: str) -> None:
        """Record a confirmed link between two images."""
        self.links.setdefault(a, set()).add(b)
        self.links.setdefault(b, set()).add(a)
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent.setdefault(ra, ra)
            self.parent[rb] = ra

    def members(self) -> dict[str, list[str]]:
        """Individual id -> its linked images (only individuals with at least one link)."""
        groups: dict[str, list[str]] = {}
        for image in self.links:
            groups.setdefault(self.find(image), []).append(image)
        return groups

    def path(self, a: str, b: str) -> list[str]:
        """The shortest chain of confirmed links from ``a`` to ``b`` (breadth first)."""
        previous, queue = {a: a}, deque([a])
        while queue and b not in previous:
            node = queue.popleft()
            for neighbour in sorted(self.links.get(node, ())):
                if neighbour not in previous:
                    previous[neighbour] = node
                    queue.append(neighbour)
        if b not in previous:
            return []
        chain = [b]
        while chain[-1] != a:
            chain.append(previous[chain[-1]])
        return chain[::-1]


def build(decisions: list[Decision]) -> tuple[Individuals, list[Conflict]]:
    """The individuals formed by ``match`` verdicts, and the ``no_match`` verdicts that contradict them."""
    individuals = Individuals()
    for d in decisions:
        if d.verdict == "match":
            individuals.link(d.anchor_id, d.candidate_id)
    conflicts = [Conflict(d.anchor_id, d.candidate_id, individuals.find(d.anchor_id),
                          individuals.path(d.anchor_id, d.candidate_id))
                 for d in decisions
                 if d.verdict == "no_match" and individuals.find(d.anchor_id) == individuals.find(d.candidate_id)]
    return individuals, conflicts
