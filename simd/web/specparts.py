"""Helpers the OpenAPI description is written with (`simd.web.openapi`, `simd.web.dupspec`)."""

from __future__ import annotations


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def err(description: str) -> dict:
    return json_body(ref("Error"), description)


def query(name: str, schema: dict, description: str) -> dict:
    """An optional query parameter. An empty value (`k=`) counts as not given, so a schema that
    does not admit the empty string (a number, a choice) admits it besides."""
    if schema.get("type") != "string":
        default = {"default": schema.pop("default")} if "default" in schema else {}
        schema = {"anyOf": [schema, {"const": ""}], **default}
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


COMMON = {
    "401": err("A token is configured and the request lacks `Authorization: Bearer <token>`."),
    "500": err("Unexpected server error."),
}


def op(summary: str, responses: dict, parameters: list | None = None, **extra) -> dict:
    out = {"summary": summary, "parameters": parameters or [], "responses": {**responses, **COMMON}}
    out.update(extra)
    return out
