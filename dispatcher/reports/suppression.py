"""Small-count suppression that totals cannot undo.

A table of counts comes with the linear relations a reader knows hold between them: a total is the sum of its
parts (``total - a - b = 0``), a row's parts add up to its total up to a figure the reader may know
(``submitted - approved - rejected = pending``), one count cannot exceed another (``dispatched - approved <= 0``).

1. **Primary suppression**: every count from 1 to ``k - 1`` is withheld. Zero is shown: it says that nothing
   happened, which concerns no resident.
2. **Complementary suppression**: in every equation a withheld count shares with published ones, more counts are
   withheld, the smallest first, until at least two are and the withheld ones add up to ``k`` or more; so no
   equation gives a withheld count away, nor a sum of them below ``k``.
3. **Audit**: a reader who knows every published count and every relation (all of them equations or
   inequalities over non-negative numbers) can still bound a withheld count by linear programming, combining
   relations. For each primary cell the audit solves those two programs (HiGHS, through scipy) on the connected
   group of withheld cells it belongs to, and requires the range left to the reader to span at least ``k - 1``
   (the width of "1 to k - 1" itself). Where it does not, one more count of the group's relations is withheld and
   the audit runs again.

The unknown terms a relation's constant stands for (pending requests, say) are taken as known to the reader:
the protection holds even then.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dispatcher.errors import InvalidReportSettings, SuppressionAuditFailed

Key = Hashable


def check_k(k: Any) -> int:
    """The suppression threshold: a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidReportSettings(f"k must be a whole number of at least 1, got {k!r}")
    return int(k)


@dataclass(frozen=True)
class Relation:
    """``sum(coef * cell) == const`` (``equal``) or ``<= const``, over the true counts."""

    terms: tuple[tuple[Key, int], ...]
    const: int = 0
    equal: bool = True

    @classmethod
    def total(cls, total: Key, parts: Iterable[Key], const: int = 0) -> Relation:
        """``total - sum(parts) == const``."""
        return cls(((total, 1), *((p, -1) for p in parts)), const)

    @classmethod
    def at_most(cls, small: Key, big: Key) -> Relation:
        """``small <= big``."""
        return cls(((small, 1), (big, -1)), 0, equal=False)


def suppress(values: Mapping[Key, int], relations: list[Relation], k: int,
             implies: Iterable[tuple[Key, Key]] = ()) -> set[Key]:
    """The cells to withhold. ``implies`` lists ``(a, b)`` pairs where withholding ``a`` means ``b`` cannot be
    published either (``b`` can be computed from ``a`` and what is shown)."""
    k = check_k(k)
    for rel in relations:
        for key, _ in rel.terms:
            if key not in values:
                raise InvalidReportSettings(f"relation names an unknown cell {key!r}")
    primary = {c for c, v in values.items() if 0 < v < k}
    hidden = set(primary)
    implies = list(implies)
    eqs = [r for r in relations if r.equal]
    passed: set[Key] = set()
    while True:
        _complete(values, eqs, hidden, implies, k)
        weak = _audit(values, relations, hidden, primary, k, passed)
        if not weak:
            return hidden
        if not _widen(values, relations, hidden, weak):
            return hidden  # nothing left to withhold around it: every related cell already is


def _complete(values: Mapping[Key, int], eqs: list[Relation], hidden: set[Key], implies: list[tuple[Key, Key]],
              k: int) -> None:
    """Steps 2 and the ``implies`` rule, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for a, b in implies:
            if a in hidden and b not in hidden:
                hidden.add(b)
                changed = True
        for rel in eqs:
            cells = [c for c, _ in rel.terms]
            withheld = [c for c in cells if c in hidden]
            if not withheld:
                continue
            while len(withheld) < 2 or sum(values[c] for c in withheld) < k:
                shown = [c for c in cells if c not in hidden]
                if not shown:
                    break
                # the smallest non-zero count first (a zero adds nothing to the withheld sum), then zeros
                pick = min(shown, key=lambda c: (values[c] == 0, values[c]))
                hidden.add(pick)
                withheld.append(pick)
                changed = True


def _groups(relations: list[Relation], hidden: set[Key]) -> list[tuple[list[Key], list[Relation]]]:
    """Withheld cells linked through shared relations, each group with the relations that touch it."""
    parent: dict[Key, Key] = {c: c for c in hidden}

    def find(c: Key) -> Key:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    touching = []
    for rel in relations:
        cells = [c for c, _ in rel.terms if c in hidden]
        if not cells:
            continue
        touching.append((rel, cells[0]))
        for c in cells[1:]:
            parent[find(c)] = find(cells[0])
    members: dict[Key, list[Key]] = {}
    for c in hidden:
        members.setdefault(find(c), []).append(c)
    rels: dict[Key, list[Relation]] = {}
    for rel, c in touching:
        rels.setdefault(find(c), []).append(rel)
    return [(cells, rels.get(root, [])) for root, cells in members.items()]


class _Program:
    """The linear programs a reader can solve about one group of withheld cells: the group's relations with every
    published count moved to the constant side, over non-negative unknowns."""

    def __init__(self, values: Mapping[Key, int], relations: list[Relation], hidden: set[Key],
                 cells: list[Key]) -> None:
        from scipy.sparse import csr_array

        self.col = {c: j for j, c in enumerate(cells)}
        parts: dict[bool, tuple[list[int], list[int], list[float], list[float]]] = {
            True: ([], [], [], []), False: ([], [], [], [])}
        for rel in relations:
            row: dict[int, float] = {}
            const = float(rel.const)
            for c, coef in rel.terms:
                if c in hidden:
                    row[self.col[c]] = row.get(self.col[c], 0.0) + coef
                else:
                    const -= coef * values[c]
            row = {j: v for j, v in row.items() if v}
            if not row:
                continue
            rows, cols, data, consts = parts[rel.equal]
            rows += [len(consts)] * len(row)
            cols += list(row)
            data += list(row.values())
            consts.append(const)
        n = len(cells)
        mats = {eq: (csr_array((d, (r, c)), shape=(len(b), n)), b) if b else (None, None)
                for eq, (r, c, d, b) in parts.items()}
        self.a_eq: Any = mats[True][0]
        self.b_eq: Any = mats[True][1]
        self.a_ub: Any = mats[False][0]
        self.b_ub: Any = mats[False][1]

    def bound(self, cell: Key, upper: bool) -> float:
        """The largest (``upper``) or smallest value of ``cell`` over the solutions (``inf`` when unbounded)."""
        from scipy.optimize import linprog

        obj = np.zeros(len(self.col))
        obj[self.col[cell]] = -1.0 if upper else 1.0
        res = linprog(obj, A_ub=self.a_ub, b_ub=self.b_ub, A_eq=self.a_eq, b_eq=self.b_eq, bounds=(0, None),
                      method="highs")
        if res.status == 3:  # unbounded: only the maximum can be
            return np.inf
        if res.status != 0:
            raise SuppressionAuditFailed(f"suppression audit: linear program failed ({res.message})")
        return float(-res.fun if upper else res.fun)


def _audit(values: Mapping[Key, int], relations: list[Relation], hidden: set[Key], primary: set[Key], k: int,
           passed: set[Key]) -> list[tuple[Key, list[Relation]]]:
    """For each group in which some primary cell is left a range narrower than ``k - 1``: that cell and the
    group's relations. A cell that passed stays in ``passed`` and is not solved for again: withholding more only
    widens what a reader can tell (the old solutions, with the newly withheld counts at their true values, are
    still solutions)."""
    weak = []
    for cells, rels in _groups(relations, hidden):
        targets = sorted((c for c in cells if c in primary and c not in passed), key=repr)
        if not targets:
            continue
        program = _Program(values, rels, hidden, cells)
        for c in targets:
            # the true value is a solution, so the minimum is at most it: a maximum k - 1 above it is enough
            hi = program.bound(c, True)
            if hi - values[c] >= k - 1 - 1e-7 or hi - program.bound(c, False) >= k - 1 - 1e-7:
                passed.add(c)
                continue
            weak.append((c, rels))
            break
    return weak


def _widen(values: Mapping[Key, int], relations: list[Relation], hidden: set[Key],
           weak: list[tuple[Key, list[Relation]]]) -> bool:
    """Withhold, for each weak cell, the smallest non-zero published count of a relation it is in (or, when all
    of those are withheld, of a relation of its group)."""
    grew = False
    for cell, rels in weak:
        own = {c for rel in rels if any(t == cell for t, _ in rel.terms) for c, _ in rel.terms if c not in hidden}
        shown = own or {c for rel in rels for c, _ in rel.terms if c not in hidden}
        if shown:
            hidden.add(min(shown, key=lambda c: (values[c] == 0, values[c], repr(c))))
            grew = True
    return grew
