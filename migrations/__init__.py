"""The migration engine: plan, journal, resumable run, verify, cut-over and rollback."""
