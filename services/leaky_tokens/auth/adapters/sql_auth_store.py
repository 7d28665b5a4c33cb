"""AuthStore over SQLAlchemy async: SQLite (embedded default) and PostgreSQL, same code."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.auth.adapters.schema import (
    api_keys,
    org_members,
    organizations,
    signing_keys,
    user_roles,
    users,
)
from leaky_tokens.auth.adapters.sql_engine import as_duplicate, make_engine, unavailable_on_outage
from leaky_tokens.auth.domain.model import (
    ApiKey,
    Membership,
    Organization,
    SigningKey,
    User,
    name_key,
)
from leaky_tokens.auth.domain.ports import LimitReachedError

__all__ = ["SqlAuthStore", "make_engine"]


def _user(row: Any, roles: Sequence[str]) -> User:
    return User(
        id=row.id,
        username=row.username,
        email=row.email,
        password_hash=row.password_hash,
        created_at=row.created_at,
        roles=frozenset(roles),
    )


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        key_hash=row.key_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _org(row: Any) -> Organization:
    return Organization(id=row.id, name=row.name, owner_id=row.owner_id, created_at=row.created_at)


@unavailable_on_outage
class SqlAuthStore:
    """The AuthStore port on a relational database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _in_code_point_order(self, column: Any) -> Any:
        """The column compared byte-wise: SQLite does so anyway, PostgreSQL would otherwise
        use the database's locale, and every store must order (and page) alike."""
        return column.collate("C") if self._engine.dialect.name == "postgresql" else column

    async def _lock_user(self, conn: Any, user_id: str) -> None:
        """Serialise capped inserts per user: PostgreSQL locks the user's row until commit.
        (SQLite takes its database write lock at the insert that follows, before counting.)"""
        await conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update())

    async def close(self) -> None:
        """Dispose of pooled connections."""
        await self._engine.dispose()

    async def _roles(self, conn: Any, user_id: str) -> list[str]:
        result = await conn.execute(
            sa.select(user_roles.c.role).where(user_roles.c.user_id == user_id)
        )
        return sorted(r for (r,) in result)

    async def add_user(self, user: User, roles: Sequence[str]) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    users.insert().values(
                        id=user.id,
                        username=user.username,
                        username_key=name_key(user.username),
                        email=user.email,
                        password_hash=user.password_hash,
                        created_at=user.created_at,
                    )
                )
                for role in roles:
                    await conn.execute(user_roles.insert().values(user_id=user.id, role=role))
        except IntegrityError as exc:
            raise as_duplicate(exc) from exc

    async def _get_user_where(self, clause: Any) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(clause))).first()
            if row is None:
                return None
            return _user(row, await self._roles(conn, row.id))

    async def get_user(self, user_id: str) -> User | None:
        return await self._get_user_where(users.c.id == user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._get_user_where(users.c.username_key == name_key(username))

    async def grant_role(self, user_id: str, role: str) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(user_roles.insert().values(user_id=user_id, role=role))
        except IntegrityError:
            async with self._engine.connect() as conn:
                if role not in await self._roles(conn, user_id):
                    raise  # not "already granted": a missing user or role

    async def revoke_role(self, user_id: str, role: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                user_roles.delete().where(
                    (user_roles.c.user_id == user_id) & (user_roles.c.role == role)
                )
            )
        return bool(result.rowcount)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                users.update().where(users.c.id == user_id).values(password_hash=password_hash)
            )

    async def add_api_key(self, key: ApiKey, max_active: int | None = None) -> None:
        async with self._engine.begin() as conn:
            await self._lock_user(conn, key.user_id)
            await conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    user_id=key.user_id,
                    name=key.name,
                    prefix=key.prefix,
                    key_hash=key.key_hash,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=key.revoked_at,
                )
            )
            if max_active is not None:
                active = sa.select(sa.func.count()).where(
                    api_keys.c.user_id == key.user_id,
                    api_keys.c.revoked_at.is_(None),
                    sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > key.created_at),
                )
                if (await conn.scalar(active) or 0) > max_active:
                    raise LimitReachedError(max_active)  # rolls the insert back

    async def list_api_keys(
        self, user_id: str, *, limit: int | None = None, after: tuple[datetime, str] | None = None
    ) -> list[ApiKey]:
        query = (
            sa.select(api_keys)
            .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
            .order_by(api_keys.c.created_at.desc(), self._in_code_point_order(api_keys.c.id))
            .limit(limit)
        )
        if after is not None:
            at, key_id = after
            query = query.where(
                sa.or_(
                    api_keys.c.created_at < at,
                    sa.and_(
                        api_keys.c.created_at == at,
                        self._in_code_point_order(api_keys.c.id) > key_id,
                    ),
                )
            )
        async with self._engine.connect() as conn:
            return [_api_key(r) for r in await conn.execute(query)]

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == key_hash))
            ).first()
        return _api_key(row) if row else None

    async def revoke_api_key(self, user_id: str, key_id: str, at: datetime) -> bool:
        statement = (
            api_keys.update()
            .where(
                api_keys.c.id == key_id,
                api_keys.c.user_id == user_id,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=at)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def add_org(
        self, org: Organization, owner: Membership, max_owned: int | None = None
    ) -> None:
        try:
            async with self._engine.begin() as conn:
                await self._lock_user(conn, org.owner_id)
                await conn.execute(
                    organizations.insert().values(
                        id=org.id,
                        name=org.name,
                        name_key=name_key(org.name),
                        owner_id=org.owner_id,
                        created_at=org.created_at,
                    )
                )
                await conn.execute(
                    org_members.insert().values(
                        org_id=owner.org_id,
                        user_id=owner.user_id,
                        role=owner.role,
                        joined_at=owner.joined_at,
                    )
                )
                if max_owned is not None:
                    owned = sa.select(sa.func.count()).where(
                        organizations.c.owner_id == org.owner_id
                    )
                    if (await conn.scalar(owned) or 0) > max_owned:
                        raise LimitReachedError(max_owned)  # rolls the insert back
        except IntegrityError as exc:
            raise as_duplicate(exc) from exc

    async def get_org(self, org_id: str) -> Organization | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(organizations).where(organizations.c.id == org_id))
            ).first()
        return _org(row) if row else None

    async def list_orgs_for_user(
        self, user_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Organization]:
        key = self._in_code_point_order(organizations.c.name_key)
        query = (
            sa.select(organizations)
            .join(org_members, org_members.c.org_id == organizations.c.id)
            .where(org_members.c.user_id == user_id)
            .order_by(key)
            .limit(limit)
        )
        if after is not None:
            query = query.where(key > after)
        async with self._engine.connect() as conn:
            return [_org(r) for r in await conn.execute(query)]

    async def add_member(self, membership: Membership) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    org_members.insert().values(
                        org_id=membership.org_id,
                        user_id=membership.user_id,
                        role=membership.role,
                        joined_at=membership.joined_at,
                    )
                )
        except IntegrityError as exc:
            raise as_duplicate(exc) from exc

    async def remove_member(self, org_id: str, user_id: str) -> bool:
        statement = org_members.delete().where(
            org_members.c.org_id == org_id, org_members.c.user_id == user_id
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    def _memberships(self) -> sa.Select[Any]:
        return sa.select(org_members, users.c.username).join(
            users, users.c.id == org_members.c.user_id
        )

    async def get_membership(self, org_id: str, user_id: str) -> Membership | None:
        query = self._memberships().where(
            org_members.c.org_id == org_id, org_members.c.user_id == user_id
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (
            Membership(row.org_id, row.user_id, row.role, row.joined_at, row.username)
            if row
            else None
        )

    async def list_members(
        self, org_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Membership]:
        key = self._in_code_point_order(users.c.username_key)
        query = self._memberships().where(org_members.c.org_id == org_id).order_by(key).limit(limit)
        if after is not None:
            query = query.where(key > after)
        async with self._engine.connect() as conn:
            return [
                Membership(r.org_id, r.user_id, r.role, r.joined_at, r.username)
                for r in await conn.execute(query)
            ]

    async def add_signing_key(self, key: SigningKey) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                signing_keys.insert().values(
                    kid=key.kid,
                    private_pem=key.private_pem,
                    created_at=key.created_at,
                    active_from=key.active_from,
                )
            )

    async def list_signing_keys(self, limit: int) -> list[SigningKey]:
        query = sa.select(signing_keys).order_by(signing_keys.c.seq.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [
                SigningKey(
                    kid=r.kid,
                    private_pem=r.private_pem,
                    created_at=r.created_at,
                    active_from=r.active_from,
                )
                for r in await conn.execute(query)
            ]
