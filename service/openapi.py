"""``/openapi.json`` and ``/docs``: the API description, generated from the code that serves it.

Each view carries an `Operation` (via `documented`); request parameters come from the pydantic
models that validate them (`service.params`) and responses from `service.schemas`. apispec
assembles the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from flask import Blueprint, Flask, current_app
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic import BaseModel

from service.params import BOOST_FORMULA, BOOST_PREFIX, FILTER_PREFIX, RANGE_OPERATORS
from service.schemas import ErrorResponse

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "bad parameters or form fields",
    401: "missing or wrong API key",
    403: "writes are disabled (no API_KEY configured)",
    404: "no such item",
    413: "request or image too large",
    414: "query string too long (over 8,190 bytes with the request line): fewer or shorter values",
    415: "not an image in an accepted format",
    422: "a corrupt or truncated image",
    503: "store unavailable, collection missing, or built by another model",
    507: "the server's disk is full: nothing was written",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, type[BaseModel]]
    query: type[BaseModel] | None = None
    form: type[BaseModel] | None = None  # multipart fields besides the image
    upload: str | None = None  # "required" or "optional": a multipart `image` field
    file_response: tuple[str, ...] = ()  # media types of a 200 that is a file, e.g. ("image/jpeg", ...)
    json_body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    auth: bool = False
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def documented(operation: Operation) -> Callable:
    def attach(view: Callable) -> Callable:
        view.openapi = operation  # type: ignore[attr-defined]
        return view

    return attach


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="lookalike",
        version="1",
        openapi_version="3.1.0",
        info={"description": "Visual product recommendations: catalogue items that look alike."},
        servers=[{"url": "/", "description": "this service (the document is served by it)"}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    schemas: dict[str, dict] = {}
    settings = app.extensions["lookalike"].settings
    deployment = Deployment(settings.protect_reads, tuple(settings.filterable_fields))
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operation = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if operation is None:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        operations = {m.lower(): _operation(operation, rule, schemas, deployment) for m in methods}
        spec.path(path=path, operations=operations)
    for name, schema in sorted(schemas.items()):
        spec.components.schema(name, schema)
    return spec.to_dict()


@dataclass(frozen=True)
class Deployment:
    """What the document depends on besides the code: who may read, and which fields are filterable."""

    protect_reads: bool
    filterable_fields: tuple[str, ...]

    def secured(self, operation: Operation, path: str) -> bool:
        return operation.auth or (self.protect_reads and path.startswith("/v1/"))

    def filter_parameters(self) -> list[dict[str, Any]]:
        """`filter.<field>` (any of, repeatable) for each filterable field, and the range bounds of
        numeric ones, as declared parameters a generated client can pass (others work the same)."""
        parameters = []
        for entry in self.filterable_fields:
            name, _, kind = entry.partition(":")
            text = {"type": "array", "items": {"type": "string"}}
            parameters.append(
                {"name": f"{FILTER_PREFIX}{name}", "in": "query", "required": False, "schema": text}
                | {"style": "form", "explode": True, "description": f"any of these values of `{name}`"}
            )
            for bound in RANGE_OPERATORS if kind == "number" else ():
                parameters.append(
                    {"name": f"{FILTER_PREFIX}{name}.{bound}", "in": "query", "required": False}
                    | {"schema": {"type": "number"}, "description": f"`{name}` {bound} this number"}
                )
            if kind == "number":
                parameters.append(
                    {"name": f"{BOOST_PREFIX}{name}", "in": "query", "required": False}
                    | {"schema": {"type": "number"}, "description": f"weight of `{name}`: {BOOST_FORMULA}"}
                )
        return parameters


def _operation(operation: Operation, rule, schemas: dict[str, dict], deployment: Deployment) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in rule.arguments
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
        if "filters" in operation.query.model_fields:
            parameters += deployment.filter_parameters()
    result: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": rule.endpoint.replace(".", "_"),
        "parameters": parameters,
        "responses": {},
    }
    if operation.description:
        result["description"] = operation.description
    if operation.upload or operation.form:
        result["requestBody"] = _multipart(operation, schemas)
    if operation.json_body is not None:
        schema = operation.json_body.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[operation.json_body.__name__] = schema
        body_ref = {"$ref": REF.format(model=operation.json_body.__name__)}
        result["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_ref}}}
    if operation.file_response:
        binary = {"schema": {"type": "string", "format": "binary"}}
        content = {media_type: binary for media_type in operation.file_response}
        result["responses"]["200"] = {"description": "the file", "content": content}
    for status, model in operation.responses.items():
        result["responses"][str(status)] = _response("OK" if status < 300 else "", model, schemas)
    too_long = (414,) if operation.query is not None else ()  # gunicorn's limit_request_line
    for status in (*operation.errors, *too_long):
        result["responses"][str(status)] = _response(ERROR_TEXT[status], ErrorResponse, schemas)
    secured = deployment.secured(operation, rule.rule)
    result["security"] = [{"bearer": []}] if secured else []  # an explicit "public" for linters
    if secured:
        result["responses"].setdefault("401", _response(ERROR_TEXT[401], ErrorResponse, schemas))
    return result


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema(ref_template=REF)["properties"]
    parameters = []
    for name, info in model.model_fields.items():
        if name in ("filters", "ranges", "boosts"):
            continue  # declared per FILTERABLE_FIELDS entry (`Deployment.filter_parameters`), described in FILTER_NOTE
        schema = {k: v for k, v in _absent_not_null(properties[name]).items() if k not in ("title", "description")}
        parameter = {"name": name, "in": "query", "required": info.is_required(), "schema": schema}
        if info.description:
            parameter["description"] = info.description
        if schema.get("type") == "array":
            parameter |= {"style": "form", "explode": True}
        parameters.append(parameter)
    return parameters


def _multipart(operation: Operation, schemas: dict[str, dict]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    if operation.upload:
        properties["image"] = {"type": "string", "format": "binary", "description": "the photo"}
        required += ["image"] if operation.upload == "required" else []
    if operation.form is not None:
        form_schema = operation.form.model_json_schema(ref_template=REF)
        required += form_schema.get("required", [])
        properties |= {name: _absent_not_null(schema) for name, schema in form_schema["properties"].items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional form field or query parameter may be left out, never sent as null: pydantic's
    ``X | None`` reads "X or null", which generated clients send as the text "None"."""
    variants = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if len(variants) == len(schema.get("anyOf", [])):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest, **variants[0]} if len(variants) == 1 else {**rest, "anyOf": variants}


def _response(description: str, model: type[BaseModel], schemas: dict[str, dict]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {
        "description": description or model.__name__,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


@bp.get("/openapi.json")
def openapi_json():
    return build_spec(current_app)


#: Swagger UI at /docs/, its files served from the flask-swagger-ui package: same origin, no CDN, so
#: the docs work offline and behind a firewall.
docs_bp = get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": "lookalike API"})
