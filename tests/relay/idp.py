"""A real OAuth 2 authorization server on loopback, built with authlib, for the OIDC tests.

It is a Flask app served by werkzeug in a thread: OpenID Connect discovery, a JWKS that
counts its fetches, and a token endpoint issuing RFC 9068 JWT access tokens (``at+jwt``)
through authlib's client-credentials grant. Its signing keys rotate on demand. Tokens a
real provider would never issue (expired, from the future, for another audience, ID
tokens) are signed by ``sign`` with the provider's own current key, so only the claim
under test differs. Every instance is stopped by its fixture; nothing listens beyond
127.0.0.1.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

AUDIENCE = "assay-relay"
KEY_TYPES: dict[str, Any] = {
    "RS256": lambda kid: RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"}),
    "ES256": lambda kid: ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"}),
    "EdDSA": lambda kid: OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig"}),
}


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """One registered client: its secret, the scopes it may ask for, and what its
    tokens say beyond authlib's defaults (``extra`` replaces claims, e.g. the scope shape)."""

    client_id: str
    secret: str
    scope: str
    extra: dict[str, Any] = field(default_factory=dict)
    expires_in: int = 300
    audience: str | list[str] = AUDIENCE

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        wanted = scope.split() if scope else self.scope.split()
        return " ".join(s for s in wanted if s in self.scope.split())

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class IdP:
    """The provider: start with ``serving()``; ``token()`` asks its token endpoint."""

    def __init__(self, alg: str = "RS256") -> None:
        self.alg = alg
        self.clients: dict[str, Client] = {}
        self.jwks_hits = 0
        self.discovery_hits = 0
        self._serial = 0
        self.signing = self._new_key()
        self.published: list[Any] = [self.signing]
        self.issuer = ""
        self.app = self._build()

    def _new_key(self) -> Any:
        self._serial += 1
        return KEY_TYPES[self.alg](f"key-{self._serial}-{secrets.token_hex(4)}")

    def rotate(self, *, keep_old: bool = False) -> str:
        """A new signing key, published (beside the old one if ``keep_old``); its kid."""
        self.signing = self._new_key()
        self.published = [*self.published, self.signing] if keep_old else [self.signing]
        return str(self.signing.kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.published]}

    def _build(self) -> Flask:
        app = Flask("test-idp")
        idp = self

        class Tokens(JWTBearerTokenGenerator):  # type: ignore[misc]
            def get_jwks(self) -> KeySet:
                return KeySet([idp.signing])

            def get_audiences(self, client: Client, user: Any, scope: str) -> Any:
                return client.audience

            def get_extra_claims(
                self, client: Client, grant_type: str, user: Any, scope: str
            ) -> dict[str, Any]:
                return dict(client.extra)

        server = AuthorizationServer(app, query_client=self.clients.get, save_token=lambda *_: None)
        generator = Tokens(issuer="", alg=self.alg)
        generator.expires_generator = lambda client, grant_type: client.expires_in
        server.register_token_generator("default", generator)
        server.register_grant(grants.ClientCredentialsGrant)
        self._generator = generator

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            idp.discovery_hits += 1
            return jsonify(
                issuer=idp.issuer,
                jwks_uri=f"{idp.issuer}/jwks.json",
                token_endpoint=f"{idp.issuer}/token",
                grant_types_supported=["client_credentials"],
                id_token_signing_alg_values_supported=[idp.alg],
            )

        @app.get("/jwks.json")
        def jwks() -> Any:
            idp.jwks_hits += 1
            return jsonify(idp.jwks())

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        return app

    def add_client(self, client_id: str, scope: str, **kw: Any) -> Client:
        client = Client(client_id, secrets.token_urlsafe(16), scope, **kw)
        self.clients[client_id] = client
        return client

    def token(self, client_id: str, scope: str | None = None) -> str:
        """A token from the token endpoint (client credentials, HTTP basic auth)."""
        client = self.clients[client_id]
        data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
        r = httpx.post(
            f"{self.issuer}/token", data=data, auth=(client_id, client.secret), timeout=10
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"].lower() == "bearer"
        return str(body["access_token"])

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """What a good token of this provider says, with ``overrides`` (None removes)."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer, "sub": "svc-reporting", "aud": AUDIENCE, "client_id": "reporting",
            "iat": now, "exp": now + 300, "jti": secrets.token_hex(8),
            "scope": "civil:metadata civil:read civil:aggregate",
        }  # fmt: skip
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None,
             key: Any = None) -> str:  # fmt: skip
        """``claims`` signed with the current key (or ``key``) under an ``at+jwt`` header."""
        key = key or self.signing
        head = {"alg": self.alg, "typ": "at+jwt", "kid": key.kid} | (header or {})
        return jwt.encode({k: v for k, v in head.items() if v is not None}, claims, key,
                          algorithms=[head["alg"]], default_type=None)  # fmt: skip

    @contextmanager
    def serving(self) -> Iterator[IdP]:
        server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_Quiet
        )
        self.issuer = f"http://127.0.0.1:{server.server_port}"
        self._generator.issuer = self.issuer
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
