"""The migration engine: plan, journal, resumable run, sync, verify, cut-over and rollback."""

from csr_vdb.migrations.alias import AliasResult, Generation, StatusReport, cutover, migration_status, rollback
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.plan import (
    DEFAULT_STATE_BASE,
    JOURNAL_FILE,
    PLAN_FILE,
    VERIFY_FILE,
    MigrationPlan,
    default_alias,
    default_target,
    find_plan,
    parse_shard,
    plan_migration,
    plans_for,
    shard_of,
    state_dir,
)
from csr_vdb.migrations.runner import MigrationResult, run_migration
from csr_vdb.migrations.schema import Preflight, SourceSchema
from csr_vdb.migrations.sync import SyncReport, sync_migration
from csr_vdb.migrations.verify import VerifyReport, verify_migration

__all__ = [
    "DEFAULT_STATE_BASE",
    "JOURNAL_FILE",
    "PLAN_FILE",
    "VERIFY_FILE",
    "AliasResult",
    "Generation",
    "Journal",
    "MigrationPlan",
    "MigrationResult",
    "Preflight",
    "SourceSchema",
    "StatusReport",
    "SyncReport",
    "VerifyReport",
    "cutover",
    "default_alias",
    "default_target",
    "find_plan",
    "migration_status",
    "parse_shard",
    "plan_migration",
    "plans_for",
    "rollback",
    "run_migration",
    "shard_of",
    "state_dir",
    "sync_migration",
    "verify_migration",
]
