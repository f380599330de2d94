"""``dbkeel demo``: a guided tour of dbkeel on a small shop schema.

With no configuration it runs on the embedded SQLite database; with ``DATABASE_URL`` set
it runs the same steps on PostgreSQL or MariaDB. Each step prints what it did.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import JSON, ForeignKey, Numeric, String, Uuid, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dbkeel.bulk import bulk_insert
from dbkeel.cli._console import console, print_error
from dbkeel.exceptions import DbkeelError
from dbkeel.manager import DatabaseManager
from dbkeel.mixins import SoftDeleteMixin, TimestampMixin, VersionMixin
from dbkeel.settings import DatabaseSettings
from dbkeel.types import UTCDateTime


class DemoBase(DeclarativeBase):
    pass


class Customer(DemoBase):
    __tablename__ = "demo_customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200), unique=True)
    orders: Mapped[list[Order]] = relationship(back_populates="customer", lazy="selectin")


class Order(DemoBase):
    __tablename__ = "demo_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("demo_customers.id"), index=True)
    item: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    customer: Mapped[Customer] = relationship(back_populates="orders")


class Product(TimestampMixin, SoftDeleteMixin, VersionMixin, DemoBase):
    __tablename__ = "demo_products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    stock: Mapped[int] = mapped_column(default=0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PageView(DemoBase):
    __tablename__ = "demo_page_views"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    path: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now)


class _DemoAbort(Exception):
    """Raised on purpose inside a session to show the rollback."""


_step_number = 0


def _step(title: str) -> None:
    """Print a numbered step heading (steps are numbered in the order they run)."""
    global _step_number
    _step_number += 1
    console.rule(f"[bold cyan]{_step_number}. {title}")


async def run_demo() -> int:
    """Run every demo step; returns the exit code."""
    try:
        settings = DatabaseSettings()
        db = DatabaseManager(settings)
        await db.initialize()
    except DbkeelError as exc:
        print_error(exc)
        return 1
    global _step_number
    _step_number = 0
    try:
        await _demo_steps(db, settings)
    except DbkeelError as exc:
        print_error(exc)
        return 1
    finally:
        await db.close()
    console.print(Panel.fit("[bold green]demo finished[/]: every step above ran for real."))
    return 0


async def _demo_steps(db: DatabaseManager, settings: DatabaseSettings) -> None:
    _step("settings and engine profile")
    console.print(f"database   {settings.masked_url}")
    console.print(
        f"profile    ENVIRONMENT={settings.environment}, pool "
        f"{type(db.engine.pool).__name__}"
        + (" (no DATABASE_URL: embedded SQLite default)" if settings.uses_default_url else "")
    )

    _step("schema")
    async with db.engine.begin() as conn:
        await conn.run_sync(DemoBase.metadata.drop_all)
        await conn.run_sync(DemoBase.metadata.create_all)
    console.print("created demo_customers, demo_orders, demo_products, demo_page_views")

    _step("write in one transaction (get_session commits on success)")
    async with db.get_session() as session:
        ada = Customer(name="Ada Lovelace", email="ada@example.com")
        ada.orders = [
            Order(item="analytical engine manual", amount=Decimal("42.00")),
            Order(item="brass gears (x12)", amount=Decimal("18.50")),
        ]
        grace = Customer(name="Grace Hopper", email="grace@example.com")
        grace.orders = [Order(item="COBOL reference", amount=Decimal("35.00"))]
        session.add_all([ada, grace])
    console.print("committed 2 customers and 3 orders")

    _step("read back")
    async with db.get_session() as session:
        rows = await session.execute(
            select(Customer.name, func.count(Order.id), func.sum(Order.amount))
            .join(Order)
            .group_by(Customer.name)
            .order_by(Customer.name)
        )
        table = Table("customer", "orders", "total")
        for name, count, total in rows:
            table.add_row(name, str(count), f"{Decimal(total):.2f}")
        console.print(table)

    _step("rollback: an error inside get_session() undoes everything in it")
    try:
        async with db.get_session() as session:
            session.add(Customer(name="Charles Babbage", email="charles@example.com"))
            await session.flush()
            console.print("inserted Charles Babbage (flushed, not committed), then an error...")
            raise _DemoAbort("payment service said no")
    except _DemoAbort as exc:
        console.print(f"error re-raised unchanged: {type(exc).__name__}: {exc}")
    async with db.get_session() as session:
        count = await session.scalar(select(func.count()).select_from(Customer)) or 0
    console.print(f"customers after the rollback: {count} (Charles was never committed)")

    await _demo_mixins(db)
    await _bulk_step(db)
    await _demo_encryption(db)
    await _demo_monitoring(db)
    await _doctor_step(settings)  # last: it audits everything the demo set up


async def _doctor_step(settings: DatabaseSettings) -> None:
    from dbkeel.cli.doctor import render_report
    from dbkeel.doctor import run_doctor

    _step("dbkeel doctor: this configuration and the demo models, audited")
    report = await run_doctor(settings, metadata=DemoBase.metadata)
    render_report(report)
    console.print("run it yourself: dbkeel doctor --models yourapp.models:Base [--json]")


async def _demo_mixins(db: DatabaseManager) -> None:
    _step("soft delete and restore (SoftDeleteMixin)")
    async with db.get_session() as session:
        session.add_all([Product(id=1, name="gear", stock=10), Product(id=2, name="lever")])
    async with db.get_session() as session:
        lever = await session.get(Product, 2)
        assert lever is not None
        lever.soft_delete()
    async with db.get_session() as session:
        visible = (await session.scalars(select(Product.name).order_by(Product.id))).all()
        everything = select(Product.name).order_by(Product.id)
        hidden = (await session.scalars(everything.execution_options(include_deleted=True))).all()
    console.print(
        f"after lever.soft_delete(): queries see {visible}; with include_deleted {hidden}"
    )
    async with db.get_session() as session:
        lever = await session.get(Product, 2, execution_options={"include_deleted": True})
        assert lever is not None
        lever.restore()
    async with db.get_session() as session:
        visible = (await session.scalars(select(Product.name).order_by(Product.id))).all()
    console.print(f"after lever.restore(): queries see {visible}")

    _step("a conflict being retried (VersionMixin + run_in_transaction)")
    attempts = 0

    async def take_one(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        gear = await session.get(Product, 1)
        assert gear is not None
        if attempts == 1:
            # Stand-in for another program writing between our read and our write. It
            # runs in our own transaction (so it also works on SQLite, which allows one
            # writer at a time) and is rolled back with the failed attempt.
            await session.execute(
                text("UPDATE demo_products SET stock = stock - 5, version = version + 1")
            )
            console.print("  attempt 1: the row changed between our read and our write")
        gear.stock -= 1
        return gear.stock

    stock = await db.run_in_transaction(take_one, backoff=0.01)
    console.print(
        f"  attempt 1 raised ConcurrentUpdateError (stale version) and was retried; "
        f"attempt {attempts} read the row again and committed: stock is {stock}"
    )


async def _demo_monitoring(db: DatabaseManager) -> None:
    """Attach a PoolMonitor (if the profile did not) and show this pool's Prometheus text."""
    from dbkeel.monitoring import PoolMonitor, prometheus_text

    _step("monitoring: pool status and Prometheus metrics for this pool")
    monitor = db.monitor or PoolMonitor.setup_listeners(
        db.engine, PoolMonitor.options_from_settings(db.settings)
    )
    for _ in range(3):
        async with db.get_session() as session:
            await session.scalar(select(func.count()).select_from(Customer))
    console.print(f"pool status: {PoolMonitor.get_pool_status(db.engine)}")
    try:
        metrics = prometheus_text(monitor)
    except DbkeelError as exc:  # MissingDependencyError without dbkeel[prometheus]
        console.print(f"[yellow]{exc}[/]")
        return
    lines = [line for line in metrics.splitlines() if not line.startswith("#")]
    shown = [line for line in lines if "_bucket" not in line]
    console.print("\n".join(shown), markup=False, highlight=False, soft_wrap=True)
    console.print(f"({len(lines) - len(shown)} histogram bucket lines not shown)")


async def _demo_encryption(db: DatabaseManager) -> None:
    """An encrypted, blind-indexed email column; then a key rotation under live data.

    The demo's keys are made up on the spot rather than configured, and put on the
    manager's engine with use_key_ring().
    """
    try:
        from dbkeel.encryption import (
            BlindIndex,
            KeyRing,
            blind_match,
            generate_key,
            rotate_keys,
            use_key_ring,
        )
        from dbkeel.types import EncryptedType

        KeyRing.parse("k:" + generate_key()[1])  # imports cryptography
    except DbkeelError as exc:  # MissingDependencyError without dbkeel[encryption]
        _step("encrypted columns")
        console.print(f"[yellow]{exc}[/]")
        return

    _step("encrypted column + blind index (EncryptedType, AES-256-GCM)")

    class SecretBase(DeclarativeBase):
        pass

    class Patient(SecretBase):
        __tablename__ = "demo_patients"

        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(EncryptedType(String(200)))
        email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"), index=True)

    old_id, old_key = generate_key("demo-2025")
    new_id, new_key = generate_key("demo-2026")
    index_key = generate_key()[1]
    use_key_ring(db.engine, KeyRing.parse(f"{old_id}:{old_key}", index_key=index_key))
    async with db.engine.begin() as conn:
        await conn.run_sync(SecretBase.metadata.drop_all)
        await conn.run_sync(SecretBase.metadata.create_all)
    async with db.get_session() as session:
        session.add_all([Patient(id=i, email=f"patient{i}@example.com") for i in range(1, 201)])
    async with db.engine.connect() as conn:
        raw = await conn.scalar(text("SELECT email FROM demo_patients WHERE id = 1"))
    console.print(
        f"stored for patient1@example.com: {bytes(raw)[:24].hex()}... ({len(raw)} bytes, "
        f"key id {old_id!r} in the header; the plaintext is not in the database)"
    )
    async with db.get_session() as session:
        found = await session.scalar(
            select(Patient).where(blind_match(Patient.email_index, "Patient42@Example.com"))
        )
    console.print(f"blind-index lookup of 'Patient42@Example.com' -> id {found and found.id}")

    # Rotation: new key active, old key still on the ring to read what is not rotated yet.
    ring = KeyRing.parse(f"{old_id}:{old_key},{new_id}:{new_key}", new_id, index_key)
    use_key_ring(db.engine, ring)
    report = await rotate_keys(db, columns=["demo_patients.email"], batch_size=50)
    for column in report.columns:
        console.print(f"rotated {column.name}: before {column.before} -> after {column.after}")
    async with db.engine.begin() as conn:
        await conn.run_sync(SecretBase.metadata.drop_all)


def _page_views(count: int) -> Iterator[dict[str, Any]]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(count):
        yield {
            "path": f"/products/{i % 997}",
            "detail": {"visitor": i % 5003, "ms": i % 250},
            "seen_at": start + dt.timedelta(seconds=i),
        }


async def _bulk_step(db: DatabaseManager) -> None:
    # DBKEEL_DEMO_BULK_ROWS lets the test suite run a short version of this step.
    count = int(os.environ.get("DBKEEL_DEMO_BULK_ROWS", "200000"))
    _step(f"bulk load: {count:,} rows streamed through bulk_insert()")
    method = "COPY" if db.engine.dialect.driver == "asyncpg" else "batched INSERT"
    columns = (
        TextColumn("[cyan]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{method} demo_page_views", total=count)

        def advance(done: int, _total: int | None) -> None:
            progress.update(task, completed=done)

        async with db.get_session() as session:
            written = await bulk_insert(session, PageView, _page_views(count), on_progress=advance)
    seconds = time.perf_counter() - started
    console.print(
        f"bulk_insert wrote {written:,} rows with {method} in {seconds:.1f} s "
        f"({written / seconds:,.0f} rows/s), generated from a stream in bounded memory"
    )
