"""Base models of what the library's migration steps return (and the CLI prints with --json)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from csr_vdb.migrations.plan import MigrationPlan


class Report(BaseModel):
    """A result model: plain JSON-ready fields, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")


class PlanReport(Report):
    """A result about one migration plan: the fields that say which migration it speaks of."""

    plan_id: str = Field(description="The plan's id.")
    source: str = Field(description="Source collection.")
    target: str = Field(description="Target collection.")
    shard: str = Field(description="Shard i/n of the plan (a verify covers every shard of its split).")

    @staticmethod
    def about(plan: MigrationPlan) -> dict[str, Any]:
        """The identifying fields of ``plan``, to pass to a subclass's constructor."""
        return {"plan_id": plan.plan_id, "source": plan.source, "target": plan.target, "shard": plan.shard}
