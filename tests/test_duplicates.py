"""Duplicates: pairs exact against a brute force, the incremental case, groups (floor, identical
bytes, dismissals by hash), keep rules; and real photos with their edited copies through Lite0."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from simd import dupgroups, duplicates, quantized
from simd.budget import Stopped
from simd.duplicates import (
    DEFAULT_KEEP_RULES,
    DUPLICATE_THRESHOLDS,
    Member,
    Pairs,
    build_pairs,
    group_dismissals,
    groups,
    matrix_similarity,
    pairs_for,
    parse_keep_rules,
    suggest_keep,
)
from simd.errors import ConfigError


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(n: int = 3000, dim: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with structure (a few clusters) and planted groups of 2-5 noisy copies; ids
    not in row order."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim), dtype=np.float32)
    x = centres[rng.integers(0, 20, n)] * 0.5 + rng.standard_normal((n, dim), dtype=np.float32)
    x = unit(x)
    rows = rng.permutation(n)
    at = 0
    while at + 5 < n // 2:
        size = int(rng.integers(2, 6))
        src = x[rows[at]]
        for r in rows[at + 1 : at + size]:
            x[r] = unit(src + rng.uniform(0.01, 0.06) * rng.standard_normal(dim, dtype=np.float32))
        at += size
    ids = rng.permutation(np.arange(10, 10 + 3 * n, 3))
    return ids.astype(np.int64), x


def brute(ids: np.ndarray, x: np.ndarray, min_score: float) -> dict[tuple[int, int], float]:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(s >= min_score, 1))
    return {(min(ids[a], ids[b]), max(ids[a], ids[b])): s[a, b] for a, b in zip(i, j, strict=True)}


def as_dict(p: Pairs) -> dict[tuple[int, int], float]:
    return {(int(a), int(b)): float(s) for a, b, s in zip(p.a, p.b, p.score, strict=True)}


def same_pairs(got: dict, want: dict, min_score: float, tie: float = 1e-6) -> None:
    """The same pairs but for ties at the threshold (within `tie`), and the same scores."""
    for k in set(got) ^ set(want):
        assert abs(got.get(k, want.get(k, 0)) - min_score) <= tie, k
    for k in set(got) & set(want):
        assert got[k] == pytest.approx(want[k], abs=1e-9)


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def full_07(data):
    return as_dict(build_pairs(*data, 0.7))


# -- pairs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_score", [0.5, 0.9])
def test_build_pairs_is_the_brute_force(data, min_score):
    ids, x = data
    got = build_pairs(ids, x, min_score)
    assert (np.diff(got.a) >= 0).all() and (got.a < got.b).all()
    want = brute(ids, x, min_score)
    assert len(want) > 400  # the planted copies, and at 0.5 a good many more
    same_pairs(as_dict(got), want, min_score)


def test_block_size_does_not_change_a_pair_or_a_score(data):
    ids, x = data
    ids, x = ids[:700], x[:700]
    ref = build_pairs(ids, x, 0.8)
    for block in (1, 7, 256, 5000):
        other = build_pairs(ids, x, 0.8, block=block)
        assert all(np.array_equal(u, v) for u, v in zip(ref, other, strict=True)), block


def low_rank(n: int = 1200, dim: int = 512, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Descriptor-like: a rank-40 signal and a little noise, with copies planted."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 40), dtype=np.float32) @ rng.standard_normal((40, dim), dtype=np.float32)
    x = unit(unit(x) + 0.15 * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim))
    for r in range(0, n // 2, 4):
        x[r + 1 : r + 3] = unit(x[r] + 0.1 * unit(rng.standard_normal((2, dim), dtype=np.float32)))
    return np.arange(100, 100 + n, dtype=np.int64), x


@pytest.mark.parametrize("kind", ["low-rank", "isotropic"])
def test_the_projected_first_pass_prunes_when_it_can_and_is_exact_either_way(monkeypatch, kind):
    """Products of 48-d projections plus a bound of what they miss: the same pairs and scores as the
    full product; on data it cannot prune (isotropic) a sample says so and the full product runs."""
    ids, x = low_rank()
    if kind == "isotropic":
        x = unit(np.random.default_rng(4).standard_normal(x.shape, dtype=np.float32))
        x[1] = unit(x[0] + 0.05 * x[2])
    fitted = []
    fit = duplicates._Projection.fit
    monkeypatch.setattr(duplicates._Projection, "fit", lambda *a: fitted.append(fit(*a)) or fitted[-1])
    got = build_pairs(ids, x, 0.8, rank=48, block=300)
    assert (fitted[0] is not None) == (kind == "low-rank")
    full = build_pairs(ids, x, 0.8, rank=0)
    assert all(np.array_equal(u, v) for u, v in zip(got, full, strict=True))
    same_pairs(as_dict(got), brute(ids, x, 0.8), 0.8)
    assert len(got.a) >= (1 if kind == "isotropic" else 300)


def test_progress_and_stop(data):
    ids, x = data
    seen: list[tuple[int, int]] = []
    build_pairs(ids[:500], x[:500], 0.9, block=100, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == len(seen) >= 5
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        build_pairs(ids, x, 0.9, stop=stop)


def test_ties_at_the_threshold_and_equal_rows():
    """A score equal to min_score is in; equal rows score alike wherever they sit in the matrix."""
    x = np.zeros((6, 64), np.float32)
    x[0, 0] = 1
    x[1, :2] = [0.6, 0.8]
    x[2:] = unit(np.arange(1, 65, dtype=np.float32))  # four equal rows
    tie = float(np.float64(np.float32(0.6)))
    pairs = as_dict(build_pairs([1, 2, 3, 4, 5, 6], x, tie, block=1))
    assert pairs[(1, 2)] == tie
    equal = [s for (a, b), s in pairs.items() if a >= 3]
    assert len(equal) == 6 and len(set(equal)) == 1
    assert (1, 2) not in as_dict(build_pairs([1, 2, 3, 4, 5, 6], x, np.nextafter(tie, 1)))


def test_inputs_are_checked_and_unnormalised_rows_normalised(data):
    ids, x = data
    with pytest.raises(ValueError, match="ids for"):
        build_pairs(ids[:3], x[:4], 0.5)
    with pytest.raises(ValueError, match="duplicate"):
        build_pairs([1, 1], x[:2], 0.5)
    with pytest.raises(ValueError, match="finite"):
        build_pairs([1, 2], np.zeros((2, 8)), 0.5)
    scaled = x[:300] * 3
    got, want = as_dict(build_pairs(ids[:300], scaled, 0.9)), as_dict(build_pairs(ids[:300], x[:300], 0.9))
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in got)
    assert np.array_equal(scaled, x[:300] * 3)  # the caller's matrix untouched
    assert len(build_pairs([1], x[:1], 0.5).a) == 0


@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_pairs_for_new_images_are_the_full_build_s(data, full_07, coarse, count):
    ids, x = data
    full = full_07
    paired = {i for k in full for i in k}
    rng = np.random.default_rng(count)
    some = [r for r in rng.permutation(len(ids)) if int(ids[r]) in paired][:count]  # new images with copies
    new = np.zeros(len(ids), bool)
    new[some] = True
    rest_x = np.ascontiguousarray(x[~new])
    enc = quantized.encode(rest_x) if coarse else None
    got = as_dict(pairs_for(ids[new], x[new], rest_x, ids[~new], 0.7, coarse=enc))
    want = {k: s for k, s in full.items() if k[0] in set(ids[new]) or k[1] in set(ids[new])}
    assert want and got == want
    # the same when the new images are already in the index (upserted first): their old rows are left out
    stale = x.copy()
    stale[new] = unit(np.ones((count, x.shape[1])))
    enc = quantized.encode(stale) if coarse else None
    assert as_dict(pairs_for(ids[new], x[new], stale, ids, 0.7, coarse=enc)) == want


# -- groups ---------------------------------------------------------------------------------------


def pairs_of(triples: list[tuple[int, int, float]]) -> Pairs:
    a, b, s = zip(*triples, strict=True) if triples else ((), (), ())
    return Pairs(np.array(a, np.int64), np.array(b, np.int64), np.array(s, np.float64))


def members(gs) -> list[tuple[int, ...]]:
    return [g.members for g in gs]


def test_groups_are_the_brute_force_s(data):
    """From build_pairs' pairs and scores asked on demand, the same groups as from a naive float64
    product's pairs and scores; the planted copies (cliques well above the floor) come out whole."""
    ids, x = data
    full = x.astype(np.float64) @ x.astype(np.float64).T
    row = {int(i): r for r, i in enumerate(ids)}
    naive = lambda a, b: full[[row[int(i)] for i in a], [row[int(j)] for j in b]]  # noqa: E731
    want_pairs = brute(ids, x, 0.85)
    ref = pairs_of([(a, b, s) for (a, b), s in sorted(want_pairs.items())])
    built = build_pairs(ids, x, 0.85)
    for threshold, floor in [(0.9, 0.6), (0.85, 0.85), (0.95, 0.3)]:
        got = groups(built, threshold, floor, similarity=matrix_similarity(ids, x))
        assert got and members(got) == members(groups(ref, threshold, floor, similarity=naive))
    got = groups(built, 0.85, 0.6, similarity=matrix_similarity(ids, x))
    parent: dict[int, int] = {}

    def find(i):
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    for a, b in want_pairs:
        parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for i in {i for k in want_pairs for i in k}:
        comps.setdefault(find(i), []).append(int(i))
    assert members(got) == sorted(tuple(sorted(c)) for c in comps.values())
    assert all(g.tier == "near-duplicate" and 0.6 <= g.min_score <= g.max_score for g in got)


def test_a_chain_of_drifting_crops_is_not_one_group(monkeypatch):
    # a ~ b (0.91), b ~ c (0.90), but a and c only 0.62: below the floor
    chain = [(1, 2, 0.91), (2, 3, 0.90), (1, 3, 0.62)]
    assert members(groups(pairs_of(chain), 0.85, 0.7)) == [(1, 2)]
    assert members(groups(pairs_of(chain), 0.85, 0.6)) == [(1, 2, 3)]
    # the pairs kept only down to 0.85: a ~ c is absent, counted below the floor, or scored on demand
    kept = pairs_of(chain[:2])
    assert members(groups(kept, 0.85, 0.7)) == [(1, 2)]
    score = {(1, 3): 0.62}
    sim = lambda a, b: np.array([score[(int(u), int(v))] for u, v in zip(a, b, strict=True)])  # noqa: E731
    assert members(groups(kept, 0.85, 0.6, similarity=sim)) == [(1, 2, 3)]
    assert members(groups(kept, 0.85, 0.7, similarity=sim)) == [(1, 2)]
    # c joins the side it is close to all of; 4..6 stay their own group; the order of links decides
    more = chain + [(3, 4, 0.95), (4, 5, 0.88), (3, 5, 0.80), (2, 4, 0.5)]
    assert members(groups(pairs_of(more), 0.85, 0.7)) == [(1, 2), (3, 4, 5)]
    with pytest.raises(ValueError, match="floor"):
        groups(kept, 0.8, 0.9)
    # a component too large to fill in: its absent pairs count as below the floor
    monkeypatch.setattr(dupgroups, "FILL_MAX", 2)
    assert members(groups(kept, 0.85, 0.6, similarity=sim)) == [(1, 2)]


def test_matrix_similarity_scores_as_build_pairs_does(data):
    ids, x = data
    p = build_pairs(ids[:400], x[:400], 0.3)
    sim = matrix_similarity(ids[:400], x[:400])
    assert np.array_equal(sim(p.a, p.b), p.score)


def test_identical_bytes_are_one_group_whatever_their_vectors():
    hashes = {1: "h1", 2: "h1", 3: "h3", 4: "h4", 5: "h5", 6: "h5"}
    found = groups(pairs_of([(2, 3, 0.9), (4, 5, 0.3)]), 0.85, 0.7, hashes=hashes)
    assert members(found) == [(1, 2, 3), (5, 6)]
    assert (found[0].tier, found[0].identical) == ("near-duplicate", ((1, 2),))
    assert (found[1].tier, found[1].identical, found[1].min_score) == ("identical", ((5, 6),), 1.0)
    # a one-hash "dismissal" does not split identical bytes
    assert members(groups(pairs_of([]), 0.85, 0.7, hashes=hashes, dismissed={frozenset({"h5"})})) == [(1, 2), (5, 6)]


def test_dismissals_are_kept_by_hash_through_renames_and_a_new_copy_shows():
    hashes = {1: "a", 2: "b", 3: "c"}
    pairs = pairs_of([(1, 2, 0.95), (1, 3, 0.93), (2, 3, 0.92)])
    assert members(groups(pairs, 0.85, 0.7, hashes=hashes)) == [(1, 2, 3)]
    dismissed = group_dismissals(hashes.values())
    assert dismissed == {frozenset("ab"), frozenset("ac"), frozenset("bc")}
    assert groups(pairs, 0.85, 0.7, hashes=hashes, dismissed=dismissed) == []
    # renamed: new ids, same bytes: still dismissed
    renamed = pairs_of([(2, 11, 0.95), (3, 11, 0.92), (2, 3, 0.93)])
    assert groups(renamed, 0.85, 0.7, hashes={11: "b", 2: "a", 3: "c"}, dismissed=dismissed) == []
    # one pair dismissed: the third image stays with the one it is closest to
    assert members(groups(pairs, 0.85, 0.7, hashes=hashes, dismissed={frozenset("ab")})) == [(1, 3)]
    # a new copy (new bytes) of the photo starts a group showing it, with its closest earlier copy
    new = pairs_of([(1, 2, 0.95), (1, 3, 0.93), (2, 3, 0.92), (1, 4, 0.97), (2, 4, 0.94), (3, 4, 0.9)])
    shown = groups(new, 0.85, 0.7, hashes={**hashes, 4: "d"}, dismissed=dismissed)
    assert members(shown) == [(1, 4)]


# -- keep rules -----------------------------------------------------------------------------------

BIG = Member("Camera/IMG_1.jpg", 4000, 3000, 4_000_000, 1_700_000_000, image_id=1)
SMALL = Member("export/IMG_1 (small).jpg", 1600, 1200, 500_000, 1_600_000_000, image_id=2)
HEIC = Member("iPhone/IMG_1.HEIC", 4000, 3000, 2_000_000, 1_650_000_000, image_id=3)
TWIN = Member("backup/2023/Camera/IMG_1.jpg", 4000, 3000, 4_000_000, 1_700_000_000, image_id=4)


def test_default_rules_most_pixels_then_larger_file_then_oldest_then_shortest_path():
    keep = suggest_keep([SMALL, HEIC, BIG])
    assert (keep.keeper, keep.index, keep.decided_by) == (BIG, 2, "largest_file")
    assert [s.rule for s in keep.steps] == ["most_pixels", "largest_file"]
    assert keep.steps[0].kept == (1, 2) and "4000x3000 (12.0 MP)" in keep.steps[0].reason
    assert "1600x1200" in keep.steps[0].reason
    assert "3.8 MB" in keep.steps[1].reason and "1.9 MB" in keep.steps[1].reason
    # equal pixels, size and time: the shortest path decides
    keep = suggest_keep([TWIN, BIG], DEFAULT_KEEP_RULES)
    assert (keep.keeper, keep.decided_by) == (BIG, "shortest_path")
    assert keep.steps[2].reason.startswith("no difference: all modified 2023-11-14")


def test_rules_in_the_users_order_and_the_last_tie_break():
    assert suggest_keep([BIG, HEIC], ["prefer_format:heic", "most_pixels"]).keeper == HEIC
    assert suggest_keep([BIG, TWIN], ["prefer_folder:backup"]).keeper == TWIN
    assert suggest_keep([BIG, TWIN, SMALL], ["prefer_folder:Camera"]).steps[0].kept == (0, 1)
    assert suggest_keep([SMALL, BIG], ["newest"]).keeper == BIG
    assert suggest_keep([BIG, SMALL], ["oldest"]).keeper == SMALL
    tied = suggest_keep([TWIN, BIG], ["most_pixels"])
    assert (tied.keeper, tied.decided_by) == (BIG, "first_path")  # "Camera/..." < "backup/..." (code points)
    unknown = Member("x.png", None, None, 10, 0)
    assert suggest_keep([unknown, SMALL]).keeper == SMALL
    assert suggest_keep([SMALL], []).decided_by == "only_member"


def test_modification_times_within_two_seconds_are_the_same_time():
    """A copy made in the same second (or kept on a FAT card, which stores 2 s) is not "older": the
    next rule decides, and the reason does not claim a difference nobody could see."""
    copy = Member("backup/2026-11/PXL_1.jpg", 4000, 3000, 4_000_000, 1_700_000_000.9, image_id=5)
    original = Member("DCIM/Camera/PXL_1.jpg", 4000, 3000, 4_000_000, 1_700_000_000.2, image_id=6)
    keep = suggest_keep([copy, original])
    assert (keep.keeper, keep.decided_by) == (original, "shortest_path")
    assert keep.steps[2].rule == "oldest" and keep.steps[2].reason.endswith("(within 2 s)")
    later = Member("backup/2026-11/PXL_1.jpg", 4000, 3000, 4_000_000, 1_700_000_003.0, image_id=5)
    assert suggest_keep([later, original]).decided_by == "oldest"


def test_rule_strings_are_checked_and_normalised():
    assert parse_keep_rules([" Most_Pixels", "prefer_format:.JPEG", "prefer_folder:/DCIM/Camera/"]) == (
        "most_pixels",
        "prefer_format:jpg",
        "prefer_folder:DCIM/Camera",
    )
    for bad, match in [
        ("biggest", "unknown keep rule 'biggest'; rules are: most_pixels, largest_file"),
        ("prefer_format:docx", "prefer_format needs one of avif, bmp"),
        ("prefer_folder:", "prefer_folder needs a folder, as in prefer_folder:Camera"),
        ("most_pixels:yes", "unknown keep rule"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_keep_rules([bad])
    with pytest.raises(ConfigError):
        suggest_keep([BIG], ["oldest", "nope"])


# -- real photos ----------------------------------------------------------------------------------


def edited_copies(img: Image.Image) -> list[Image.Image]:
    """Resized to 160 px, a central 60% crop, re-saved as JPEG q60."""
    w, h = img.size
    scale = 160 / max(w, h)
    small = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    crop = img.crop((round(w * 0.2), round(h * 0.2), round(w * 0.8), round(h * 0.8)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    return [small, crop, Image.open(io.BytesIO(buf.getvalue())).convert("RGB")]


@pytest.mark.slow
def test_real_photos_group_with_their_edited_copies_and_unrelated_ones_stay_alone():
    from images import phone_photo
    from skimage import data as samples

    import simd.backbones as bb
    from simd.embedder import Embedder

    emb = Embedder(bb.load_backbone("efficientnet-lite0"))
    threshold, floor, lowest = DUPLICATE_THRESHOLDS[emb.model_id][:3]
    images, origin = [], []
    for seed in range(4):  # chelsea, coffee, astronaut, rocket as phone photos, and their copies
        original = phone_photo(seed, size=(1600, 1200))
        for img in [original, *edited_copies(original)]:
            images.append(img)
            origin.append(seed)
    for name in ("hubble_deep_field", "retina", "coins", "camera", "moon"):
        images.append(Image.fromarray(getattr(samples, name)()).convert("RGB"))
        origin.append(-1 - len(origin))
    x = np.stack([emb.embed_image(img) for img in images])
    ids = np.arange(1, len(images) + 1)
    pairs = build_pairs(ids, x, lowest)
    found = groups(pairs, threshold, floor, similarity=matrix_similarity(ids, x))
    want = [tuple(int(i) for i in ids[np.array(origin) == s]) for s in range(4)]
    assert members(found) == want
