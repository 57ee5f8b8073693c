"""Groups of copies from pairs of images: connected at a threshold, never below a floor, dismissals kept.

Images of the same content hash are one node (identical bytes: always one group, whatever their
vectors). Two nodes are linked when their score is at least `threshold`; a group is built from its
strongest links first, and two groups are joined only when *every* pair of nodes between them scores
at least `floor` and none was dismissed as "not duplicates". So a chain of drifting crops a ~ b ~ c,
where a and c score below the floor, is never one group: c is left out of {a, b} (or joins whichever
side it is close to all of). It is the same as taking the connected components at `threshold` and
splitting each complete-linkage style: deterministic (links by score, then ids) and O(k^2) for a
component of k nodes (numpy over one k x k matrix per component: a listing of 100k images is not
a Python loop over every pair). Pairs are kept down to the lowest threshold a request may ask for, not down to
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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    by_hash: dict[str, list[int]] = {}
    for i, h in hashes.items():
        if h is not None:
            by_hash.setdefault(h, []).append(int(i))
    ids_of: dict[int, list[int]] = {}  # node -> its ids, for nodes of 2+ ids
    for same in by_hash.values():
        if len(same) > 1:
            same.sort()
            ids_of[same[0]] = same
    codes = _Codes(by_hash, dismissed)
    u, v, s = _best(pairs, floor, codes)
    found: list[tuple[list[int], float, float]] = []  # (nodes, weakest, strongest) of 2+ nodes
    if len(u):
        nodes, inv = np.unique(np.concatenate([u, v]), return_inverse=True)
        li, lj = inv[: len(u)], inv[len(u) :]
        strong = s >= threshold
        graph = coo_matrix((np.ones(int(strong.sum())), (li[strong], lj[strong])), shape=(len(nodes),) * 2)
        _, label = connected_components(graph, directed=False)
        same = label[li] == label[lj]  # pairs inside a component: the only ones that can join
        order = np.argsort(label[li[same]], kind="stable")
        pl, pi, pj, ps = label[li[same]][order], li[same][order], lj[same][order], s[same][order]
        cuts = np.flatnonzero(np.diff(pl)) + 1
        starts = np.r_[0, cuts] if len(pl) else cuts  # each component's run of pairs
        ends = np.r_[cuts, len(pl)] if len(pl) else cuts
        members = np.argsort(label, kind="stable")  # local nodes by component, ascending within
        bounds = np.searchsorted(label[members], np.arange(label.max() + 2))
        matrices: list[tuple[np.ndarray, np.ndarray]] = []  # (nodes, k x k scores) of the components to fill
        for ci, lo, hi in zip(pl[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            local = members[bounds[ci] : bounds[ci + 1]]
            if len(local) == 2:  # the most common: one link, one group
                found.append((nodes[local].tolist(), float(ps[lo]), float(ps[lo])))
                continue
            part = (nodes[local], np.searchsorted(local, pi[lo:hi]), np.searchsorted(local, pj[lo:hi]), ps[lo:hi])
            if len(local) > FILL_MAX:  # absent pairs count as below the floor (see FILL_MAX)
                found += _cluster_links(*part, threshold)
                continue
            score = np.full((len(local), len(local)), np.nan)
            score[part[1], part[2]] = part[3]
            matrices.append((part[0], score))
        if similarity is not None:
            _fill(matrices, floor, similarity, codes)
        for comp_nodes, score in matrices:
            found += _join(comp_nodes, score, threshold)
    clustered = {n for c, _, _ in found for n in c}
    found += [([n], 1.0, 1.0) for n in ids_of if n not in clustered]
    out = []
    for members_, weakest, strongest in found:
        copies = tuple(tuple(ids_of[n]) for n in sorted(members_) if n in ids_of)
        ids = tuple(sorted(i for n in members_ for i in ids_of.get(n, [n])))
        tier = "identical" if len(members_) == 1 else "near-duplicate"
        out.append(Group(ids, tier, copies, weakest, strongest))
    return sorted(out, key=lambda g: g.members[0])


class _Codes:
    """Content hashes as small integers, ids as their node (the smallest id of their hash) and the
    dismissed pairs of contents as sorted integer keys: what `groups` looks up in arrays, not dicts."""

    def __init__(self, by_hash: Mapping[str, list[int]], dismissed: Iterable[frozenset[str]]):
        code = {h: c for c, h in enumerate(by_hash)}
        ids = [(i, c, same[0]) for c, same in enumerate(by_hash.values()) for i in same]
        ids.sort()
        self.ids = np.array([i for i, _, _ in ids], np.int64)
        self.code = np.array([c for _, c, _ in ids], np.int64)
        self.node = np.array([n for _, _, n in ids], np.int64)
        self.n = max(len(code), 1)
        ban = []
        for d in dismissed:
            if len(d) == 2:  # one hash: identical bytes are always a group
                x, y = sorted(code.get(h, -1) for h in d)
                if x >= 0:
                    ban.append(x * self.n + y)
        self.ban = np.unique(np.array(ban, np.int64))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(node, code) of each id: itself and -1 for an id of no hash."""
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        hit = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), bool)
        node = np.where(hit, self.node[pos] if len(self.ids) else ids, ids)
        return node, np.where(hit, self.code[pos] if len(self.ids) else -1, -1)

    def banned(self, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
        key = np.minimum(ca, cb) * self.n + np.maximum(ca, cb)
        return (ca >= 0) & (cb >= 0) & np.isin(key, self.ban)


def _best(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], floor: float, codes: _Codes):
    """The node pairs (u < v) scoring >= floor and not dismissed, each with the best score of its ids."""
    a, b, score = (np.asarray(x) for x in pairs)
    keep = score >= floor
    a, b, score = a[keep].astype(np.int64), b[keep].astype(np.int64), score[keep].astype(np.float64)
    (na, ca), (nb, cb) = codes.lookup(a), codes.lookup(b)
    keep = (na != nb) & ~codes.banned(ca, cb)
    u, v, score = np.minimum(na, nb)[keep], np.maximum(na, nb)[keep], score[keep]
    order = np.lexsort((-score, v, u))  # by pair, the best score first
    u, v, score = u[order], v[order], score[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    return u[first], v[first], score[first]


def _fill(matrices: list[tuple[np.ndarray, np.ndarray]], floor: float, similarity: Similarity, codes: _Codes) -> None:
    """Score the absent pairs of these components (nodes ascending, a k x k matrix of the scores >= floor
    each, NaN where absent) with `similarity`, all components' pairs in a few calls, not one each."""
    which, cells, a, b = [], [], [], []
    tri: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n, (nodes, score) in enumerate(matrices):
        k = len(nodes)
        if k not in tri:
            tri[k] = np.triu_indices(k, 1)
        ii, jj = tri[k]
        absent = np.isnan(score[ii, jj])
        ii, jj = ii[absent], jj[absent]
        which.append(np.full(len(ii), n))
        cells.append(ii * k + jj)
        a.append(nodes[ii])
        b.append(nodes[jj])
    if not which:
        return
    w, c, ua, ub = (np.concatenate(x) for x in (which, cells, a, b))
    got = np.empty(len(w))
    for at in range(0, len(w), 1 << 16):  # in slices: memory bounded for any component
        got[at : at + (1 << 16)] = np.asarray(similarity(ua[at : at + (1 << 16)], ub[at : at + (1 << 16)]), np.float64)
    ok = got >= floor
    ok[ok] = ~codes.banned(codes.lookup(ua[ok])[1], codes.lookup(ub[ok])[1])
    w, c, got = w[ok], c[ok], got[ok]
    edges = np.searchsorted(w, np.arange(len(matrices) + 1))  # w ascends: each component's run
    for n, (lo, hi) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)):
        if lo < hi:
            matrices[n][1].ravel()[c[lo:hi]] = got[lo:hi]


def _join(nodes: np.ndarray, score: np.ndarray, threshold: float) -> list[tuple[list[int], float, float]]:
    """`groups`' joining in one component of k nodes (ascending) on the k x k matrix (upper triangle) of
    its node pairs scoring >= floor and not dismissed, NaN elsewhere."""
    k = len(nodes)
    ii, jj = np.nonzero(~np.isnan(score))
    vals = score[ii, jj]
    count = np.zeros((k, k), np.int64)  # root x root: their node pairs scoring >= floor
    count[ii, jj] = count[jj, ii] = 1
    link = vals >= threshold
    order = np.lexsort((jj[link], ii[link], -vals[link]))
    root, kids = list(range(k)), [[x] for x in range(k)]
    for x, y in zip(ii[link][order].tolist(), jj[link][order].tolist(), strict=True):
        rx, ry = root[x], root[y]
        if rx == ry or count[rx, ry] < len(kids[rx]) * len(kids[ry]):  # some pair between below the floor
            continue
        if len(kids[rx]) < len(kids[ry]):
            rx, ry = ry, rx
        for w in kids[ry]:
            root[w] = rx
        kids[rx] += kids[ry]
        kids[ry] = []
        count[rx] += count[ry]
        count[:, rx] += count[:, ry]
    r = np.array(root)
    inside = r[ii] == r[jj]
    lo, hi = np.full(k, np.inf), np.full(k, -np.inf)
    np.minimum.at(lo, r[ii][inside], vals[inside])
    np.maximum.at(hi, r[ii][inside], vals[inside])
    return [(nodes[m].tolist(), float(lo[x]), float(hi[x])) for x, m in enumerate(kids) if len(m) > 1]


def _cluster_links(nodes, li, lj, s, threshold):
    """`groups`' joining in one component too large for a matrix (see FILL_MAX), over its stored links."""
    best = dict(zip(zip(nodes[li].tolist(), nodes[lj].tolist(), strict=True), s.tolist(), strict=True))
    root: dict[int, int] = {}  # node -> its cluster's root
    kids: dict[int, list[int]] = {}  # root -> its nodes
    ok: dict[int, dict[int, int]] = {}  # root -> {root: node pairs between them scoring >= floor}
    for u, v in best:
        ok.setdefault(u, {})[v] = 1
        ok.setdefault(v, {})[u] = 1
    for (u, v), sc in sorted(best.items(), key=lambda e: (-e[1], e[0])):
        if sc < threshold:
            break
        ru, rv = root.get(u, u), root.get(v, v)
        if ru == rv:
            continue
        nu, nv = kids.setdefault(ru, [ru]), kids.setdefault(rv, [rv])
        if ok[ru].get(rv, 0) < len(nu) * len(nv):
            continue
        if len(nu) < len(nv):
            ru, rv, nu, nv = rv, ru, nv, nu
        for w in nv:
            root[w] = ru
        nu += kids.pop(rv)
        for x, c in ok.pop(rv).items():
            if x != ru:
                ok[ru][x] = ok[ru].get(x, 0) + c
                ok[x][ru] = ok[x].pop(rv) + ok[x].get(ru, 0)
        ok[ru].pop(rv, None)
    spread: dict[int, list[float]] = {}
    for (u, v), sc in best.items():
        r = root.get(u, u)
        if r == root.get(v, v):
            lo_hi = spread.setdefault(r, [sc, sc])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], sc), max(lo_hi[1], sc)
    return [(m, *spread[r]) for r, m in kids.items() if len(m) > 1]
