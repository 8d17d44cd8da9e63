"""SASL on the test brokers' extra listeners: users, mechanisms, the authorizer and ACLs.

``KafkaCluster(listeners={"SASL_SSL": "SASL_SSL", "SASL": "SASL_PLAINTEXT"},
sasl=Sasl(users={"alice": "alice-secret"}))`` enables, on every extra listener whose
security protocol is SASL_*, the mechanisms PLAIN (the users in the listener's JAAS
``user_NAME="password"`` options, as Kafka's PlainServerCallbackHandler reads them),
SCRAM-SHA-256 and SCRAM-SHA-512 (the same users' credentials written into the cluster
metadata at storage format time with ``kafka-storage format --add-scram``) and OAUTHBEARER
(Kafka's OAuthBearerUnsecuredValidatorCallbackHandler: unsigned ``alg: none`` JWTs, the
principal in ``sub``; see :func:`unsecured_jwt`).

With ``authorizer=True`` (the default) the brokers run ``StandardAuthorizer`` and every
SASL user needs ACLs (:func:`grant`); the PLAINTEXT and CONTROLLER listeners, which the
harness itself, the inter-broker and the controller connections use, authenticate nobody,
and their principal ``User:ANONYMOUS`` is the super user, so the harness's own admin,
metadata and producer-id helpers keep working unchanged.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import Cluster

MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
SCRAM_MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: The principal of every connection to a listener without authentication.
SUPER_USER = "User:ANONYMOUS"
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_OAUTH_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"
_OAUTH_VALIDATOR = (
    "org.apache.kafka.common.security.oauthbearer.internals.unsecured."
    "OAuthBearerUnsecuredValidatorCallbackHandler"
)


def _jaas_string(value: str) -> str:
    if '"' in value or "\\" in value or ";" in value:
        raise ValueError(
            f"test SASL names and passwords avoid quotes, backslashes and ';': {value!r}"
        )
    return f'"{value}"'


@dataclass(frozen=True)
class Sasl:
    """SASL settings of a KafkaCluster's SASL_* listeners."""

    #: name -> password, for PLAIN and both SCRAM mechanisms.
    users: Mapping[str, str] = field(default_factory=dict)
    mechanisms: tuple[str, ...] = MECHANISMS
    #: StandardAuthorizer, with ANONYMOUS (the harness's plaintext listeners) as super user.
    authorizer: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.mechanisms) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"unknown SASL mechanisms {sorted(unknown)}; known: {MECHANISMS}")
        for name, password in self.users.items():
            _jaas_string(name)
            _jaas_string(password)
            if "," in name or "=" in name or "]" in name:
                raise ValueError(f"--add-scram cannot carry the user name {name!r}")

    def __repr__(self) -> str:  # passwords stay out of test reports
        return f"Sasl(users={sorted(self.users)}, mechanisms={self.mechanisms})"

    def broker_config(self, listeners: Iterable[str]) -> dict[str, str]:
        """server.properties entries for the given SASL listener names, and the authorizer."""
        config: dict[str, str] = {}
        if self.authorizer:
            config["authorizer.class.name"] = _AUTHORIZER
            config["super.users"] = SUPER_USER
        plain_users = " ".join(
            f"user_{name}={_jaas_string(pw)}" for name, pw in sorted(self.users.items())
        )
        for listener in listeners:
            prefix = f"listener.name.{listener.lower()}."
            config[prefix + "sasl.enabled.mechanisms"] = ",".join(self.mechanisms)
            for mechanism in self.mechanisms:
                key = f"{prefix}{mechanism.lower()}.sasl.jaas.config"
                if mechanism == "PLAIN":
                    config[key] = f"{_PLAIN_MODULE} required {plain_users};"
                elif mechanism in SCRAM_MECHANISMS:
                    config[key] = f"{_SCRAM_MODULE} required;"
                else:
                    config[key] = f"{_OAUTH_MODULE} required;"
                    config[f"{prefix}oauthbearer.sasl.server.callback.handler.class"] = (
                        _OAUTH_VALIDATOR
                    )
        return config

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM credentials of every user."""
        args: list[str] = []
        for mechanism in self.mechanisms:
            if mechanism in SCRAM_MECHANISMS:
                for name, password in sorted(self.users.items()):
                    args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args


def unsecured_jwt(subject: str, *, lifetime_s: int = 3600, **claims: Any) -> str:
    """An unsigned JWT (``alg: none``) for ``subject``, as OAUTHBEARER's unsecured validator
    accepts it (it requires ``sub`` and a future ``exp``; ``iat`` is checked when present)."""
    now = int(time.time())

    def part(value: Mapping[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    body = {"sub": subject, "iat": now, "exp": now + lifetime_s, **claims}
    return f"{part({'alg': 'none'})}.{part(body)}."


#: Operations by resource type for :func:`grant` (kafka-python's ACLOperation names).
RESOURCE_TYPES = ("topic", "group", "cluster", "transactional_id")


def grant(
    cluster: Cluster,
    user: str,
    resource: str,
    name: str,
    operations: Iterable[str],
    *,
    prefixed: bool = False,
    deny: bool = False,
) -> None:
    """Allow (or ``deny``) ``User:user`` the ``operations`` ("WRITE", "READ", "DESCRIBE",
    "ALL", ...) on one resource (``"topic"``, ``"group"``, ``"cluster"`` with name
    ``"kafka-cluster"``, ``"transactional_id"``), ``name`` literal (``"*"``: every name) or
    ``prefixed``, through the Admin API on the harness's super-user listener; waits until
    every running node enforces it."""
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    if resource not in RESOURCE_TYPES:
        raise ValueError(f"resource is one of {RESOURCE_TYPES}, got {resource!r}")
    pattern = ResourcePattern(
        ResourceType[resource.upper()],
        name,
        ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL,
    )
    permission = ACLPermissionType.DENY if deny else ACLPermissionType.ALLOW
    acls = [
        ACL(f"User:{user}", "*", ACLOperation[op.upper()], permission, pattern) for op in operations
    ]
    admin = cluster.admin()
    try:
        result = admin.create_acls(acls)
        if result["failed"]:
            raise RuntimeError(f"creating ACLs {acls} failed: {result['failed']}")
        # ACLs reach each broker through the metadata log: wait until the admin sees them.
        want = len(acls)
        deadline = time.monotonic() + 30
        filt = ACLFilter(
            f"User:{user}",
            "*",
            ACLOperation.ANY,
            permission,
            ResourcePatternFilter(pattern.resource_type, name, pattern.pattern_type),
        )
        while True:
            found, _ = admin.describe_acls(filt)
            if len({(a.operation, a.resource_pattern.resource_name) for a in found}) >= want:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"ACLs {acls} not visible after 30s: {found}")
            time.sleep(0.1)
    finally:
        admin.close()
    # Each broker applies the metadata log on its own; a short settle avoids a race where
    # the next request lands on a broker a record behind.
    time.sleep(0.5)


def grant_producer(
    cluster: Cluster, user: str, topic: str = "*", *, prefixed: bool = False
) -> None:
    """Everything a producer and a consumer of ``topic`` (by default every topic) need:
    topic ALL (auto-creation included), every group, and the cluster's IDEMPOTENT_WRITE."""
    grant(cluster, user, "topic", topic, ["ALL"], prefixed=prefixed)
    grant(cluster, user, "group", "*", ["ALL"])
    grant(cluster, user, "cluster", "kafka-cluster", ["IDEMPOTENT_WRITE", "CREATE", "DESCRIBE"])
