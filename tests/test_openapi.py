"""`/api/openapi.json` documents exactly the routes the app has (kept in step by this test)."""

from __future__ import annotations

import re

import pytest
from webfixtures import build_env, web_config

from simd.web import create_app

IGNORED_METHODS = {"HEAD", "OPTIONS"}
NOT_API = {"/", "/static/<path:filename>", "/static/<filename>"}


@pytest.fixture
def app(tmp_path):
    return create_app(web_config(), build_env(tmp_path, count=2, size=(64, 48)).service)


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in NOT_API:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(path, m.lower()) for m in rule.methods - IGNORED_METHODS}
    return out


def test_documented_paths_equal_the_url_map(app):
    spec = app.test_client().get("/api/openapi.json").get_json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == _routes(app)


def test_spec_is_openapi_31_and_self_consistent(app):
    spec = app.test_client().get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "simd"
    schemas = spec["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', str(spec).replace("'", '"')))
    assert refs and refs <= set(schemas)
    for path, ops in spec["paths"].items():
        params = set(re.findall(r"{([a-z_]+)}", path))
        for method, op in ops.items():
            assert op["responses"], (path, method)
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == params, (path, method)
            for status, resp in op["responses"].items():
                if int(status) >= 400:
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_status_schema_lists_the_contract_fields(app):
    spec = app.test_client().get("/api/openapi.json").get_json()
    required = set(spec["components"]["schemas"]["Status"]["required"])
    assert {"state", "indexed", "pending", "failed", "model", "dim", "library"} <= required
    status = app.test_client().get("/api/status").get_json()
    assert required <= set(status)


def test_documented_bounds_are_the_enforced_ones():
    from simd import search
    from simd.web import openapi

    for name in ("ID_MAX", "OFFSET_MAX", "Q_MAX", "PATH_MAX"):
        assert getattr(openapi, name) == getattr(search, name), name
    params = {p["name"]: p["schema"] for p in openapi.PATHS["/api/images"]["get"]["parameters"]}
    assert params["limit"]["anyOf"][0]["maximum"] == search.LIMIT_MAX
    similar = {p["name"]: p["schema"] for p in openapi.PATHS["/api/similar"]["get"]["parameters"]}
    assert similar["k"]["anyOf"][0]["maximum"] == search.K_MAX


def test_duplicates_are_documented_with_the_enforced_bounds(app):
    from simd import search
    from simd.web import dupspec

    spec = app.test_client().get("/api/openapi.json").get_json()
    assert {"/api/duplicates", "/api/duplicates/dismiss", "/api/duplicates/trash"} <= set(spec["paths"])
    assert dupspec.OFFSET_MAX == search.OFFSET_MAX
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/duplicates"]["get"]["parameters"]}
    assert params["limit"]["anyOf"][0]["maximum"] == search.LIMIT_MAX
    assert params["tier"]["anyOf"][0]["enum"] == ["identical", "near-duplicate"]
    status = app.test_client().get("/api/status").get_json()
    assert {"duplicates", "allow_trash"} <= set(status) & set(spec["components"]["schemas"]["Status"]["properties"])
