"""/openapi.json is generated from the code: every route is in it, with the validated parameters."""

from __future__ import annotations

from openapi_spec_validator import validate

from service.params import SearchParams


def test_document_is_valid_openapi_and_covers_every_route(app, client):
    document = client.get("/openapi.json").get_json()
    validate(document)
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.openapi_json", "swagger_ui.show", "page.index", "prometheus_metrics"):
            continue
        path = rule.rule.replace("<item_id>", "{item_id}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)


def test_search_parameters_come_from_the_validating_model(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/v1/items/{item_id}/similar"]["get"]
    names = {p["name"] for p in operation["parameters"] if p["in"] == "query" and not p["name"].startswith("filter.")}
    assert names == set(SearchParams.model_fields) - {"filters", "ranges", "boosts"}  # declared per field, below
    k = next(p for p in operation["parameters"] if p["name"] == "k")
    assert (k["schema"]["minimum"], k["schema"]["maximum"], k["schema"]["default"]) == (1, 100, 4)
    assert "filter.<field>" in operation["description"] and "boost.<field>" in operation["description"]
    upload = document["paths"]["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "required" not in upload  # the image, unless `text` is given
    assert "text" in {p["name"] for p in document["paths"]["/v1/search"]["post"]["parameters"]}
    assert "SearchResults" in document["components"]["schemas"]
    assert document["paths"]["/v1/items/{item_id}"]["put"]["security"] == [{"bearer": []}]


def test_docs_page_points_at_the_document_and_needs_no_other_host(client):
    page = client.get("/docs", follow_redirects=True)
    assert page.status_code == 200 and b"/openapi.json" in page.data
    assert b"swagger-ui-bundle.js" in page.data and b"https://" not in page.data  # same origin only
    assert client.get("/docs/swagger-ui-bundle.js").status_code == 200


def test_optional_fields_may_be_absent_but_are_never_null(client):
    """Generated clients send a null form field as the text "None" (a PUT would store product "None")."""
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            fields = [p["schema"] for p in operation.get("parameters", [])]
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            fields += list(body["schema"]["properties"].values()) if body else []
            for schema in fields:
                assert {"type": "null"} not in schema.get("anyOf", []), (method, path, schema)
    put = document["paths"]["/v1/items/{item_id}"]["put"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert put["properties"]["product_id"]["type"] == "string" and "product_id" not in put["required"]


def test_the_image_endpoint_lists_its_real_media_types(client):
    document = client.get("/openapi.json").get_json()
    content = document["paths"]["/v1/items/{item_id}/image"]["get"]["responses"]["200"]["content"]
    assert {"image/jpeg", "image/png", "image/webp"} <= set(content) and "image/*" not in content


def test_filters_of_the_filterable_fields_and_read_security_are_declared(settings, encoder, store, ingested):
    from service import create_app

    numeric = settings.model_copy(update={"filterable_fields": ["colour", "price:number"], "protect_reads": True})
    app = create_app(numeric, encoder=encoder, store=store)
    try:
        document = app.test_client().get("/openapi.json").get_json()
    finally:
        app.extensions["lookalike"].inference.close()
    validate(document)
    similar = document["paths"]["/v1/items/{item_id}/similar"]["get"]
    declared = {p["name"]: p for p in similar["parameters"]}
    assert declared["filter.colour"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert declared["filter.price.gte"]["schema"] == {"type": "number"} and "filter.colour.gte" not in declared
    assert declared["boost.price"]["schema"] == {"type": "number"} and "boost.colour" not in declared
    assert similar["security"] == [{"bearer": []}] and "401" in similar["responses"]  # reads need the key
    assert document["paths"]["/healthz"]["get"]["security"] == []  # public, and says so


def test_reads_are_public_in_the_document_unless_protected(client):
    document = client.get("/openapi.json").get_json()
    assert document["paths"]["/v1/items/{item_id}/similar"]["get"]["security"] == []


def test_operations_with_a_query_string_document_gunicorns_414(client):
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            has_query = any(p["in"] == "query" for p in operation["parameters"])
            assert ("414" in operation["responses"]) == has_query, (path, method)
    assert "414" in document["paths"]["/v1/items/{item_id}/similar"]["get"]["responses"]
