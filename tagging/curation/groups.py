"""Union-find: the connected components behind near-duplicate clusters and split groups."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class UnionFind:
    """Disjoint sets over ``0 … n-1`` with path halving and union by size.

    Args:
        n: Number of elements.
    """

    def __init__(self, n: int) -> None:
        self._parent = list(range(n))
        self._size = [1] * n

    def find(self, item: int) -> int:
        """The representative of ``item``'s set."""
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if self._size[root_a] < self._size[root_b]:
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        self._size[root_a] += self._size[root_b]

    def components(self) -> list[int]:
        """A component label per element, numbered ``0, 1, …`` in order of each component's
        smallest element, so that the labels depend only on the sets, not on the union order."""
        labels: dict[int, int] = {}
        out = []
        for item in range(len(self._parent)):
            root = self.find(item)
            out.append(labels.setdefault(root, len(labels)))
        return out


def components(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Component labels of ``0 … n-1`` linked by ``pairs`` (see :meth:`UnionFind.components`)."""
    sets = UnionFind(n)
    for a, b in pairs:
        sets.union(a, b)
    return sets.components()


def link_equal(keys: Iterable[Hashable | None]) -> list[tuple[int, int]]:
    """Pairs that link every element to the first one with the same key (``None`` links nothing).

    Args:
        keys: One key per element, e.g. each row's vehicle page.
    """
    first: dict[Hashable, int] = {}
    pairs = []
    for index, key in enumerate(keys):
        if key is None:
            continue
        pairs.append((first.setdefault(key, index), index))
    return pairs
