"""dbkeel doctor against local PostgreSQL, schema checks included (issue 8; goal: < 2 s).

Measured through run_doctor(), the function the CLI calls, so interpreter start-up is
not counted; `time dbkeel doctor` adds roughly 0.5 s of imports on top.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, ForeignKey, Integer, MetaData, Table

from benchmarks._harness import PG_URL, compare
from dbkeel import DatabaseSettings
from dbkeel.doctor import run_doctor


def _metadata() -> MetaData:
    metadata = MetaData()
    for i in range(50):
        Table(
            f"t{i}",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("parent_id", ForeignKey("t0.id")),
            Column("data", JSON),
        )
    return metadata


async def main() -> None:
    settings = DatabaseSettings(
        database_url=PG_URL, environment="production", app_name="dbkeel-bench"
    )
    metadata = _metadata()

    async def doctor() -> int:
        report = await run_doctor(settings, workers=4, metadata=metadata)
        return len(report.findings)

    await compare(
        "dbkeel doctor, local PostgreSQL, 50 models",
        {"run_doctor": doctor},
        baseline="run_doctor",
        rounds=5,
        goal="goal: median < 2 s",
    )
