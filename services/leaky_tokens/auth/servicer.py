"""AuthService over gRPC: decode the request, call the domain, encode the response."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from leaky.auth.v1 import auth_pb2 as pb
from leaky.auth.v1 import auth_pb2_grpc
from leaky_tokens.auth.domain.audit import client_address_var
from leaky_tokens.auth.domain.model import ApiKey, Membership, Organization, Session
from leaky_tokens.auth.domain.service import AuthApp
from leaky_tokens.runtime.convert import optional_datetime, timestamp
from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.runtime.identity import current_caller

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuthService"].full_name
PUBLIC_METHODS = frozenset(
    f"/{SERVICE_NAME}/{name}" for name in ("Register", "Login", "ValidateApiKey", "GetJwks")
)


def _json_name(request: Message, field_name: str) -> str:
    """The proto3 JSON name clients see for a domain field name (snake_case)."""
    found = request.DESCRIPTOR.fields_by_name.get(field_name)
    if found is not None:
        return found.json_name
    head, *rest = field_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _renamed(
    method: Callable[[Any, Message, Context], Awaitable[Message]],
) -> Callable[[Any, Message, Context], Awaitable[Message]]:
    @functools.wraps(method)
    async def renamed(self: Any, request: Message, context: Context) -> Message:
        try:
            return await method(self, request, context)
        except InvalidArgumentError as error:
            violations = [
                FieldViolation(_json_name(request, v.field), v.description)
                for v in error.violations
            ]
            raise InvalidArgumentError(violations) from None

    return renamed


def _wire_field_names(cls: type[T]) -> type[T]:
    """Every RPC of the class renames the domain's field violations to the request's JSON
    names, so the domain never learns the wire format and clients see the names they send."""
    for method in pb.DESCRIPTOR.services_by_name["AuthService"].methods:
        if method.name in vars(cls):
            setattr(cls, method.name, _renamed(getattr(cls, method.name)))
    return cls


def _api_key(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=key.id,
        user_id=key.user_id,
        name=key.name,
        created_at=timestamp(key.created_at),
        expires_at=timestamp(key.expires_at),
        prefix=key.prefix,
    )


def _org(org: Organization) -> pb.Organization:
    return pb.Organization(
        id=org.id, name=org.name, owner_id=org.owner_id, created_at=timestamp(org.created_at)
    )


def _member(m: Membership) -> pb.OrganizationMember:
    return pb.OrganizationMember(
        user_id=m.user_id, username=m.username, role=m.role, joined_at=timestamp(m.joined_at)
    )


def _session_fields(session: Session) -> dict[str, Any]:
    return {
        "user_id": session.user.id,
        "username": session.user.username,
        "token": session.token,
        "roles": sorted(session.user.roles),
        "expires_at": timestamp(session.expires_at),
    }


def _metadata(context: Context, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key and isinstance(v, str):
            return v
    return ""


def client_address(context: Context) -> str:
    """The caller's IP: x-leaky-client-address, which Envoy writes from the connection's peer
    over any client-sent one (ADR 0012, 0015), else the gRPC peer; also kept for audit lines."""
    address = _metadata(context, "x-leaky-client-address").strip()
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        address = _peer_host(context.peer() or "")
    client_address_var.set(address)
    return address


def _peer_host(peer: str) -> str:
    # grpc peers look like "ipv4:1.2.3.4:5678", "ipv6:[::1]:5678" or "unix:/path".
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


@_wire_field_names
class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Thin translation layer; every rule lives in AuthApp."""

    def __init__(self, app: AuthApp) -> None:
        self._app = app

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        session = await self._app.register(
            request.username, request.email, request.password, client_address(context)
        )
        return pb.RegisterResponse(**_session_fields(session))

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        session = await self._app.login(request.username, request.password, client_address(context))
        return pb.LoginResponse(**_session_fields(session))

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        client_address(context)  # for the audit line
        issued = await self._app.create_api_key(
            current_caller(),
            request.user_id,
            request.name,
            optional_datetime(request, "expires_at", "expires_at"),
        )
        key = issued.key
        return pb.CreateApiKeyResponse(
            id=key.id,
            user_id=key.user_id,
            name=key.name,
            created_at=timestamp(key.created_at),
            expires_at=timestamp(key.expires_at),
            api_key=issued.secret,
        )

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        page = await self._app.list_api_keys(
            current_caller(), request.user_id, request.page_size, request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[_api_key(k) for k in page.items], next_page_token=page.next_token
        )

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        client_address(context)  # for the audit line
        at = await self._app.revoke_api_key(current_caller(), request.user_id, request.api_key_id)
        return pb.RevokeApiKeyResponse(api_key_id=request.api_key_id, revoked_at=timestamp(at))

    async def ValidateApiKey(
        self, request: pb.ValidateApiKeyRequest, context: Context
    ) -> pb.ValidateApiKeyResponse:
        owner = await self._app.validate_api_key(_metadata(context, "x-api-key"))
        return pb.ValidateApiKeyResponse(
            user_id=owner.key.user_id,
            name=owner.key.name,
            expires_at=timestamp(owner.key.expires_at),
            roles=sorted(owner.roles),
            api_key_id=owner.key.id,
            org_ids=sorted(owner.org_ids),
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=[pb.Jwk(**k) for k in await self._app.jwks()])

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: Context
    ) -> pb.RotateSigningKeyResponse:
        client_address(context)  # for the audit line
        key, published = await self._app.rotate_signing_key(current_caller())
        return pb.RotateSigningKeyResponse(
            kid=key.kid, published_kids=published, active_from=timestamp(key.active_from)
        )

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: Context
    ) -> pb.CreateOrganizationResponse:
        org = await self._app.create_org(current_caller(), request.name)
        return pb.CreateOrganizationResponse(organization=_org(org))

    async def ListMyOrganizations(
        self, request: pb.ListMyOrganizationsRequest, context: Context
    ) -> pb.ListMyOrganizationsResponse:
        page = await self._app.list_my_orgs(current_caller(), request.page_size, request.page_token)
        return pb.ListMyOrganizationsResponse(
            organizations=[_org(o) for o in page.items], next_page_token=page.next_token
        )

    async def AddOrganizationMember(
        self, request: pb.AddOrganizationMemberRequest, context: Context
    ) -> pb.AddOrganizationMemberResponse:
        member = await self._app.add_member(current_caller(), request.org_id, request.user_id)
        return pb.AddOrganizationMemberResponse(member=_member(member))

    async def RemoveOrganizationMember(
        self, request: pb.RemoveOrganizationMemberRequest, context: Context
    ) -> pb.RemoveOrganizationMemberResponse:
        await self._app.remove_member(current_caller(), request.org_id, request.user_id)
        return pb.RemoveOrganizationMemberResponse(org_id=request.org_id, user_id=request.user_id)

    async def ListOrganizationMembers(
        self, request: pb.ListOrganizationMembersRequest, context: Context
    ) -> pb.ListOrganizationMembersResponse:
        page = await self._app.list_members(
            current_caller(), request.org_id, request.page_size, request.page_token
        )
        return pb.ListOrganizationMembersResponse(
            members=[_member(m) for m in page.items], next_page_token=page.next_token
        )
