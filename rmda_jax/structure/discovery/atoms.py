"""Dimension atoms: a union-find over the axes of a jaxpr's values that can be refined into factors.

Example:
  >>> from rmda_jax.structure.discovery.atoms import Atoms
  >>> atoms = Atoms()
  >>> fused, head, dim = atoms.new(12), atoms.new(3), atoms.new(4)
  >>> atoms.align([fused], [head, dim])   # a reshape (12,) -> (3, 4) splits the class of `fused`
  True
  >>> parts = atoms.leaves([fused])
  >>> [atoms.sizes[a] for a in parts], atoms.find(parts[0]) == atoms.find(head)
  ([3, 4], True)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence


class Atoms:
  """Union-find over dimension atoms that can be refined into factors.

  Each array axis of size > 1 is a list of atoms (row-major factors). Splitting
  an atom splits its whole class, so every linked axis sees the same factors.
  """

  def __init__(self):
    self.parent: list = []
    self.sizes: list = []
    self.children: list = []
    self.members: dict = {}
    self.reasons: dict = {}

  def new(self, size: int) -> int:
    atom = len(self.parent)
    self.parent.append(atom)
    self.sizes.append(int(size))
    self.children.append(None)
    self.members[atom] = [atom]
    self.reasons[atom] = set()
    return atom

  def find(self, a: int) -> int:
    root = a
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[a] != root:
      self.parent[a], a = root, self.parent[a]
    return root

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if len(self.members[ra]) < len(self.members[rb]):
      ra, rb = rb, ra
    self.parent[rb] = ra
    self.members[ra].extend(self.members.pop(rb))
    self.reasons[ra] |= self.reasons.pop(rb)

  def leaves(self, atoms: Iterable[int]) -> list:
    out = []
    stack = list(atoms)[::-1]
    while stack:
      a = stack.pop()
      if self.children[a] is None:
        out.append(a)
      else:
        stack.extend(self.children[a][::-1])
    return out

  def split(self, a: int, sizes: Sequence[int]) -> None:
    """Refine the class of leaf atom ``a`` into factors ``sizes`` (row-major)."""
    root = self.find(a)
    members = self.members[root]
    reasons = set(self.reasons[root])
    first = None
    for m in members:
      self.children[m] = [self.new(s) for s in sizes]
      if first is None:
        first = self.children[m]
        for c in first:
          self.reasons[c] |= reasons
      else:
        for c0, c in zip(first, self.children[m]):
          self.union(c0, c)

  def align(self, left: Sequence[int], right: Sequence[int]) -> bool:
    """Link two atom sequences of the same total size factor by factor.

    Where one factor covers several it is refined; False where they interleave.
    """
    left, right = collections.deque(self.leaves(left)), collections.deque(self.leaves(right))
    while left and right:
      a, b = left.popleft(), right.popleft()
      if self.children[a] is not None:
        left.extendleft(self.children[a][::-1])
        right.appendleft(b)
        continue
      if self.children[b] is not None:
        right.extendleft(self.children[b][::-1])
        left.appendleft(a)
        continue
      sa, sb = self.sizes[a], self.sizes[b]
      if sa == sb:
        self.union(a, b)
      elif sa < sb and sb % sa == 0:
        self.split(b, (sa, sb // sa))
        right.appendleft(b)
        left.appendleft(a)
      elif sb < sa and sa % sb == 0:
        self.split(a, (sb, sa // sb))
        left.appendleft(a)
        right.appendleft(b)
      else:
        return False
    return not left and not right

  def mark(self, atoms: Iterable[int], reason: str) -> None:
    for leaf in self.leaves(atoms):
      self.reasons[self.find(leaf)].add(reason)
