"""Parameter parsing and score bands of the read side (the routes are tested in test_web_api.py)."""

import pytest

from simd.errors import BadRequest, NotFound
from simd.search import match_label, normalise_rel, parse_k, parse_min_score


@pytest.mark.parametrize("value, expected", [(None, 10), ("", 10), ("1", 1), (" 100 ", 100), (7, 7)])
def test_parse_k(value, expected):
    assert parse_k(value) == expected


@pytest.mark.parametrize("value", ["0", "101", "-3", "x", "1.5", "1e2"])
def test_parse_k_rejects(value):
    with pytest.raises(BadRequest, match="k must"):
        parse_k(value)


@pytest.mark.parametrize("value", ["2", "-1.5", "nan?", "abc"])
def test_parse_min_score_rejects(value):
    with pytest.raises(BadRequest, match="min_score"):
        parse_min_score(value)


def test_parse_min_score_accepts():
    assert parse_min_score("0.8") == 0.8 and parse_min_score(None) is None and parse_min_score("-1") == -1


@pytest.mark.parametrize("path, expected", [("a/b.jpg", "a/b.jpg"), ("./a//b.jpg", "a/b.jpg"), ("a\\b.jpg", "a/b.jpg")])
def test_normalise_rel(path, expected):
    assert normalise_rel(path) == expected


@pytest.mark.parametrize("path", ["../x.jpg", "a/../../x", "/etc/passwd", "", "."])
def test_normalise_rel_refuses_escapes(path):
    with pytest.raises(NotFound):
        normalise_rel(path)


def test_match_bands_are_per_model():
    assert match_label("efficientnet-lite0+r2", 0.95) == "near-duplicate"
    assert match_label("efficientnet-lite0+r2", 0.5) == "similar"
    assert match_label("efficientnet-lite0+r2", 0.1) == "weak"
    assert match_label("efficientnet-lite0", 0.95) is None  # the previous default: its indexes are re-embedded
    # Uncalibrated models (other backbones, the seed baseline) get no label rather than a wrong one.
    assert match_label("efficientnet-lite0+seed", 0.95) is None
    assert match_label("resnet50", 0.95) is None
