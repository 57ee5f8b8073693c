"""The plain (dict per pair) `groups` as it was before `simd.dupgroups` went to numpy: the reference the
fast one must match exactly (tests/test_dupgroups_fast.py). Do not optimise.

Images of the same content hash are one node (identical bytes: always one group, whatever their
vectors). Two nodes are linked when their score is at least `threshold`; a group is built from its
strongest links first, and two groups are joined only when *every* pair of nodes between them scores
at least `floor` and none was dismissed as "not duplicates". So a chain of drifting crops a ~ b ~ c,
where a and c score below the floor, is never one group: c is left out of {a, b} (or joins whichever
side it is close to all of). It is the same as taking the connected components at `threshold` and
splitting each complete-linkage style: deterministic (links by score, then ids) and O(k^2) for a
component of k nodes. Pairs are kept down to the lowest threshold a request may ask for, not down to
the floor (far fewer); `similarity` scores the absent pairs inside a component (without it an absent
pair counts as below the floor).

Dismissals are keyed by content hashes (frozenset({hash_a, hash_b})), so they survive renames and
rescans: a dismissed pair is neither a link nor allowed in one group. A dismissed group is all its
pairs (`group_dismissals`); a new copy (a new hash) of the same photo links to them again and starts
a group showing it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Components of more nodes than this (at the threshold) are not filled in by `similarity`: their
# absent pairs count as below the floor (k^2 scores would be too many; such a component is a
# threshold set too low for the library, not a group of copies).
FILL_MAX = 2000


@dataclass(frozen=True)
class Group:
    """One group of copies. `members`: ids ascending; `tier`: "identical" (all of the same bytes) or
    "near-duplicate"; `identical`: the members of the same bytes, 2 or more a set; `min_score` and
    `max_score`: its weakest and strongest link between different contents (1.0 when there are none)."""

    members: tuple[int, ...]
    tier: str
    identical: tuple[tuple[int, ...], ...]
    min_score: float
    max_score: float


def group_dismissals(hashes: Iterable[str]) -> set[frozenset[str]]:
    """A whole group's "not duplicates" decision, as the dismissals of all its pairs of contents."""
    return {frozenset(p) for p in itertools.combinations(sorted(set(hashes)), 2)}


def groups(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    floor: float,
    *,
    hashes: Mapping[int, str | None] | None = None,
    dismissed: Iterable[frozenset[str]] = (),
    similarity: Similarity | None = None,
) -> list[Group]:
    """The groups of copies (2 or more images each), by their smallest id: images of one content hash
        (`hashes`: id -> hash) always together, other images linked by a score >= `threshold`, no two
        contents in a group below `floor` or dismissed (see the module's doc). `similarity(ids_a, ids_b)`:
    the float64 cosines of absent pairs, when the pairs do not reach down to the floor."""
    if not floor <= threshold:
        raise ValueError(f"floor {floor} must not be above the threshold {threshold}")
    hashes = hashes or {}
    ban = {d for d in dismissed if len(d) == 2}  # one hash: identical bytes are always a group
    by_hash: dict[str, list[int]] = {}
    for i, h in hashes.items():
        if h is not None:
            by_hash.setdefault(h, []).append(int(i))
    node_of: dict[int, int] = {}  # id -> its content's node (the smallest id of that hash)
    ids_of: dict[int, list[int]] = {}  # node -> its ids, for nodes of 2+ ids
    for same in by_hash.values():
        if len(same) > 1:
            same.sort()
            ids_of[same[0]] = same
            node_of.update((i, same[0]) for i in same)

    a, b, score = (np.asarray(x) for x in pairs)
    keep = score >= floor
    best: dict[tuple[int, int], float] = {}  # (node, node) -> the best score of their ids
    for i, j, s in zip(a[keep].tolist(), b[keep].tolist(), score[keep].tolist(), strict=True):
        u, v = node_of.get(i, i), node_of.get(j, j)
        if u == v:
            continue
        hash_i, hash_j = hashes.get(i), hashes.get(j)
        if hash_i is not None and hash_j is not None and frozenset((hash_i, hash_j)) in ban:
            continue
        key = (u, v) if u < v else (v, u)
        if s > best.get(key, -2.0):
            best[key] = s

    if similarity is not None:
        _fill_components(best, threshold, floor, similarity, hashes, ban)
    root: dict[int, int] = {}  # node -> its cluster's root
    nodes: dict[int, list[int]] = {}  # root -> its nodes
    ok: dict[int, dict[int, int]] = {}  # root -> {root: node pairs between them scoring >= floor}
    for u, v in best:
        ok.setdefault(u, {})[v] = 1
        ok.setdefault(v, {})[u] = 1
    for (u, v), s in sorted(best.items(), key=lambda e: (-e[1], e[0])):
        if s < threshold:
            break
        ru, rv = root.get(u, u), root.get(v, v)
        if ru == rv:
            continue
        nu, nv = nodes.setdefault(ru, [ru]), nodes.setdefault(rv, [rv])
        if ok[ru].get(rv, 0) < len(nu) * len(nv):  # some pair between them below the floor
            continue
        if len(nu) < len(nv):
            ru, rv, nu, nv = rv, ru, nv, nu
        for w in nv:
            root[w] = ru
        nu += nodes.pop(rv)
        for x, c in ok.pop(rv).items():
            if x != ru:
                ok[ru][x] = ok[ru].get(x, 0) + c
                ok[x][ru] = ok[x].pop(rv) + ok[x].get(ru, 0)
        ok[ru].pop(rv, None)

    spread: dict[int, list[float]] = {}  # root -> [min, max] of its links
    for (u, v), s in best.items():
        r = root.get(u, u)
        if r == root.get(v, v):
            lo_hi = spread.setdefault(r, [s, s])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], s), max(lo_hi[1], s)
    found = []
    for r in sorted(set(nodes) | (set(ids_of) - set(root))):
        members = nodes.get(r, [r])
        if len(members) == 1 and r not in ids_of:
            continue
        copies = tuple(tuple(ids_of[n]) for n in sorted(members) if n in ids_of)
        weakest, strongest = spread.get(r, [1.0, 1.0])
        ids = tuple(sorted(i for n in members for i in ids_of.get(n, [n])))
        tier = "identical" if len(members) == 1 else "near-duplicate"
        found.append(Group(ids, tier, copies, weakest, strongest))
    return sorted(found, key=lambda g: g.members[0])


def _fill_components(
    best: dict[tuple[int, int], float],
    threshold: float,
    floor: float,
    similarity: Similarity,
    hashes: Mapping[int, str | None],
    ban: set[frozenset[str]],
) -> None:
    """Add to `best` the absent node pairs, scoring >= floor and not dismissed, inside each connected
    component of the links >= threshold, up to FILL_MAX nodes: what the floor check needs (k^2 for k nodes)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for (u, v), s in best.items():
        if s >= threshold:
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    members: dict[int, list[int]] = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    for some in members.values():
        nodes = np.array(sorted(set(some) | {find(some[0])}), np.int64)
        if not 2 < len(nodes) <= FILL_MAX:  # larger: absent pairs count as below the floor
            continue
        ii, jj = np.triu_indices(len(nodes), 1)
        for s in range(0, len(ii), 1 << 16):  # in slices: memory bounded for any component
            us, vs = nodes[ii[s : s + (1 << 16)]], nodes[jj[s : s + (1 << 16)]]
            absent = np.array([(u, v) not in best for u, v in zip(us.tolist(), vs.tolist(), strict=True)], bool)
            if not absent.any():
                continue
            us, vs = us[absent], vs[absent]
            scores = np.asarray(similarity(us, vs), np.float64)
            for u, v, score in zip(us.tolist(), vs.tolist(), scores.tolist(), strict=True):
                hu, hv = hashes.get(u), hashes.get(v)
                if score >= floor and not (hu is not None and hv is not None and frozenset((hu, hv)) in ban):
                    best[(u, v)] = score
