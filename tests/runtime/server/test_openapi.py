"""The OpenAPI document is exact: schemathesis walks it against the app and finds nothing it does not say.

Every generated request goes to the real ASGI app (token mode, the real service and batcher)
over a backend that answers at once. A request valid by the schema must get an image (200;
429 only if the queue were full), whatever the schema allows; every answer's status, content
type, headers and JSON body must be the ones the document lists for that route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from plan import contract
from runtime.server.app import STATIC_PATH, create_app
from runtime.server.auth import SCHEME_NAME, TokenVerifier
from runtime.server.settings import Settings
from tests.runtime.server.test_auth import mint
from tests.runtime.server.test_tls import InstantBackend

MAX_EXAMPLES = 100  # per operation, positive and negative mixed; the module takes ~25 s on 2 cores


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# Docs on: /openapi.json and /docs exist only when asked for (pods serve neither).
SETTINGS = Settings(
    model_id="instant",
    auth="token",
    metrics_sink="none",
    ui=False,
    docs=True,
    max_wait_ms=0.0,
    queue_size=64,
    torch_threads=1,
)
VERIFIER = TokenVerifier(KEY.public_key(), SETTINGS.issuer, SETTINGS.token_audience)
CONFIG = SchemathesisConfig.from_dict(
    {"generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}}
)


def new_app() -> Any:
    return create_app(SETTINGS, InstantBackend(), verifier=VERIFIER)


# The document comes from an app of its own: schemathesis ends an app's lifespan after each test, and a
# service does not start twice, so every test below serves from a fresh, ready app.
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", new_app(), config=CONFIG)


@pytest.fixture
def app() -> Iterator[Any]:
    fresh = new_app()
    with asgi.get_client(fresh):  # starts the lifespan: model load and batcher, on schemathesis' event loop
        deadline = time.monotonic() + 30
        while not fresh.state.service.ready:
            assert time.monotonic() < deadline, fresh.state.service.reason
            time.sleep(0.02)
        yield fresh
    asgi.shutdown_lifespans()


def token() -> str:
    return mint(KEY, iss=SETTINGS.issuer, aud=SETTINGS.token_audience)


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_in_the_document_and_every_valid_request_is_served(app: Any, case: schemathesis.Case) -> None:
    response = case.call_and_validate(headers={"Authorization": f"Bearer {token()}"}, app=app)
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if positive and case.method == "POST":
        assert response.status_code in (200, 429), (case.body, response.status_code, response.text)


def test_images_route_documents_every_status_with_its_content_type() -> None:
    doc = new_app().openapi()
    op = doc["paths"][contract.IMAGES_PATH]["post"]
    assert set(op["responses"]) == {"200", "401", "413", "415", "422", "429", "499", "500", "503", "504"}
    assert set(op["responses"]["200"]["content"]) == {"image/png", "application/json"}
    for status, answer in op["responses"].items():
        if status != "200":
            assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    for status in ("429", "503"):
        assert "Retry-After" in op["responses"][status]["headers"]
    assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["description"] == 'Bearer error="invalid_token"'
    assert op["security"] == [{SCHEME_NAME: []}]
    assert doc["components"]["securitySchemes"][SCHEME_NAME] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": f"An RS256 JWT from the inventory API's token route (aud '{contract.TOKEN_AUDIENCE}').",
    }
    assert contract.METRICS_PATH not in doc["paths"]  # served by the metrics listener, not this app
    for path in (contract.HEALTH_PATH, contract.READY_PATH):
        assert "security" not in doc["paths"][path]["get"]  # open: see runtime.server.auth


def _documented(doc: dict[str, Any], method: str, path: str, status: int, content_type: str) -> bool:
    answers = doc["paths"][path][method.lower()]["responses"]
    answer = answers.get(str(status))
    media = content_type.split(";")[0].strip()
    return answer is not None and any(key.split(";")[0] == media for key in answer["content"])


def test_refusals_the_generator_rarely_reaches_are_documented_too(app: Any) -> None:
    """Answers a schema walk seldom provokes (no token, wrong content type, huge body, bad JSON, wrong method)."""
    doc = app.openapi()
    good = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    requests: list[tuple[str, dict[str, str], bytes, int]] = [
        ("POST", {"Content-Type": "application/json"}, b'{"prompt": "a"}', 401),
        ("POST", {**good, "Content-Type": "text/plain"}, b"a cat", 415),
        ("POST", good, b'{"prompt": "' + b"x" * 70_000 + b'"}', 413),
        ("POST", good, b'{"prompt": ', 422),
        ("POST", good, b'{"prompt": "a", "num_images": 2}', 422),
    ]
    with asgi.get_client(app) as client:
        for method, headers, body, status in requests:
            r = client.request(method, contract.IMAGES_PATH, headers=headers, data=body)
            assert r.status_code == status, r.text
            assert _documented(doc, method, contract.IMAGES_PATH, status, r.headers["content-type"]), (
                status,
                r.headers,
            )
        wrong_method = client.get(contract.IMAGES_PATH)
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json()["field"] == "method"


def test_several_images_need_json_in_the_schema_itself() -> None:
    """The rule the server enforces is the schema's if/then, so a schema validator refuses the same body."""
    import jsonschema

    body_schema = new_app().openapi()["paths"][contract.IMAGES_PATH]["post"]["requestBody"]["content"][
        "application/json"
    ]
    validator = jsonschema.Draft202012Validator(body_schema["schema"])
    assert not validator.is_valid({"prompt": "a", "num_images": 2})
    assert not validator.is_valid({"prompt": "a", "num_images": 2, "response_format": "png"})
    assert validator.is_valid({"prompt": "a", "num_images": 2, "response_format": "json"})
    assert validator.is_valid({"prompt": "a", "num_images": 1})
    assert not validator.is_valid({"prompt": " \t\n"})
    assert not validator.is_valid({"prompt": "a\x00b"})


def test_docs_page_loads_only_local_assets(app: Any) -> None:
    with asgi.get_client(app) as client:
        page = client.get(contract.DOCS_PATH)
        assert page.status_code == 200
        html = page.text
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert f'"{STATIC_PATH}/{asset}"' in html
            served = client.get(f"{STATIC_PATH}/{asset}")
            assert served.status_code == 200 and len(served.content) > 500
        assert '"validatorUrl": null' in html  # the spec is never sent to validator.swagger.io
        assert json.loads(client.get("/openapi.json").text)["openapi"].startswith("3.1")


def test_static_sources_are_recorded() -> None:
    static = Path(__file__).resolve().parents[3] / "runtime" / "server" / "static"
    sources = (static / "SOURCES.md").read_text()
    import hashlib

    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        digest = hashlib.sha256((static / asset).read_bytes()).hexdigest()
        assert digest in sources, asset
    assert "Apache License 2.0" in sources and (static / "LICENSE.swagger-ui").exists()
