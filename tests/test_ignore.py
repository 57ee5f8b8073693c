from __future__ import annotations

import pytest

from simd.ignore import IgnoreRules

BUILT_IN = [
    # (relative path, is_dir, ignored)
    ("", True, False),
    ("photo.jpg", False, False),
    ("2024/holiday/IMG_0001.JPG", False, False),
    ("no-suffix", False, False),  # content decides, not the name
    ("notes.txt", False, False),
    (".hidden.jpg", False, True),
    (".git", True, True),
    (".git/objects/ab/cdef", False, True),
    ("album/.thumbnails/a.jpg", False, True),
    ("._IMG_0001.JPG", False, True),  # AppleDouble
    ("album/._IMG_0001.JPG", False, True),
    (".~lock.report.odt#", False, True),
    ("@eaDir", True, True),
    ("album/@eaDir/IMG_1.JPG/SYNOFILE_THUMB_XL.jpg", False, True),
    ("#recycle/old.jpg", False, True),
    ("#snapshot/GMT+00_2024.01.01/a.jpg", False, True),
    ("lost+found/#1234", False, True),
    ("$RECYCLE.BIN/S-1-5-21/$R1.jpg", False, True),
    ("$Recycle.Bin", True, True),
    ("System Volume Information/x", False, True),
    ("@Recycle/a.jpg", False, True),
    ("photo.jpg.tmp", False, True),
    ("photo.TMP", False, True),
    ("movie.part", False, True),
    ("photo.jpg.partial", False, True),
    ("photo.jpg.crdownload", False, True),
    ("photo.jpg.download", False, True),
    ("~photo.jpg", False, True),
    ("photo.jpg~", False, True),
    ("photo.jpg.swp", False, True),
    ("photo.jpg.!qB", False, True),
    ("upload.jpg.filepart", False, True),
    ("tmp", True, False),
    ("album.part", True, False),  # temp-file names apply to files, not folders
    ("a~b.jpg", False, False),
    ("partial.jpg", False, False),
]


@pytest.mark.parametrize("rel, is_dir, expected", BUILT_IN)
def test_built_in_rules(rel, is_dir, expected):
    assert IgnoreRules().ignored(rel, is_dir) is expected


CONFIGURED = [
    # (patterns, relative path, is_dir, ignored)
    (["*.xmp"], "2024/a.xmp", False, True),
    (["*.xmp"], "2024/a.XMP", False, True),  # case-insensitive
    (["*.xmp"], "2024/a.jpg", False, False),
    (["Private"], "Private", True, True),
    (["Private"], "Private/a.jpg", False, True),  # a folder pattern covers its subtree
    (["Private"], "2024/private/a.jpg", False, True),
    (["Private"], "Privateer/a.jpg", False, False),
    (["2019/drafts"], "2019/drafts/x/a.jpg", False, True),
    (["2019/drafts"], "2020/drafts/a.jpg", False, False),
    (["2019/drafts/"], "2019/drafts", True, True),  # trailing slash tolerated
    (["raw/*"], "raw/a.cr2", False, True),
    (["raw/*"], "raw", True, False),
    (["IMG_00??.jpg"], "x/IMG_0012.jpg", False, True),
    (["IMG_00??.jpg"], "x/IMG_0123.jpg", False, False),
    (["*/cache/*"], "a/cache/b.jpg", False, True),
    (["", "  "], "a.jpg", False, False),  # blank patterns are no patterns
]


@pytest.mark.parametrize("patterns, rel, is_dir, expected", CONFIGURED)
def test_configured_patterns(patterns, rel, is_dir, expected):
    assert IgnoreRules(patterns).ignored(rel, is_dir) is expected


def test_leading_slash_and_dot_slash_are_tolerated():
    rules = IgnoreRules(["Private"])
    assert rules.ignored("/Private/a.jpg", False) and rules.ignored("./Private/a.jpg", False)
    assert not rules.ignored("./a.jpg", False)


def test_patterns_are_kept_for_display():
    assert IgnoreRules(["*.xmp", " raw/ "]).patterns == ("*.xmp", "raw")


def test_the_walk_finds_exactly_the_files_ignored_lets_through(tmp_path):
    """The walk judges each entry by its own name only (its folders passed on the way down); on a
    real tree holding every case above it must agree with `ignored` on the whole path."""
    from simd.scanner import walk

    patterns = sorted({p for ps, _, _, _ in CONFIGURED for p in ps})
    rules = IgnoreRules(patterns)
    files = set()
    for rel, is_dir, _ in BUILT_IN + [(rel, is_dir, None) for _, rel, is_dir, _ in CONFIGURED]:
        if not rel:
            continue
        path = tmp_path / rel
        for base in ("", "sub/"):  # each case at the top and one level down
            target = tmp_path / base / rel
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                (target / "inside.jpg").write_bytes(b"x")
                files.add(f"{base}{rel}/inside.jpg")
            elif not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"x")
                files.add(f"{base}{rel}")
        assert path.exists()
    files = {f for f in files if (tmp_path / f).is_file()}
    expected = {f for f in files if not rules.ignored(f, False)}
    assert set(walk(tmp_path, rules)) == expected
    assert 10 < len(expected) < len(files) - 20  # both kinds are there in numbers
