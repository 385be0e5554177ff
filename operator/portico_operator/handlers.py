"""kopf wiring: every watch event of every kind goes to ``Controller.apply_event``.

Every replica keeps a warm view from these watches; only the leader's workers act on it. What a
leader allocates from is not this view but a fresh listing it takes when it takes the lead
(``Controller.take_over``). Handlers return nothing and patch nothing through kopf, so kopf keeps
no annotations or finalizers of its own on users' objects.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
from portico_common import API_GROUP
from portico_common.kube import Credentials

from .controller import Controller

WATCHED = {
    "services": ("", "v1", "services"),
    "namespaces": ("", "v1", "namespaces"),
    "nodes": ("", "v1", "nodes"),
    "slices": ("discovery.k8s.io", "v1", "endpointslices"),
    "pools": (API_GROUP, "v1alpha1", "vippools"),
    "lbs": (API_GROUP, "v1alpha1", "loadbalancers"),
    "agents": (API_GROUP, "v1alpha1", "nodeagents"),
    "reports": (API_GROUP, "v1alpha1", "gatewayreports"),
}


def build_registry(ctl: Controller, creds: Credentials) -> kopf.OperatorRegistry:
    r = kopf.OperatorRegistry()

    @kopf.on.login(registry=r)
    def login(**_: Any) -> kopf.ConnectionInfo:
        token = creds.current_token()
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=not creds.verify,
            certificate_path=creds.cert_path,
            private_key_path=creds.key_path,
            scheme="Bearer" if token else None,
            token=token,
            default_namespace=creds.namespace,
            # Rotating tokens: kopf logs in again (through this handler) when this passes.
            expiration=(
                dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
                if creds.refresh is not None
                else None
            ),
        )

    for kind, (group, version, plural) in WATCHED.items():

        async def on_event(
            event: kopf.RawEvent, body: kopf.Body, __kind: str = kind, **_: Any
        ) -> None:
            ctl.apply_event(__kind, event.get("type"), body)

        kopf.on.event(group, version, plural, registry=r, id=f"watch-{kind}")(on_event)

    return r
