"""Load: DWH reads and writes, the quarantine, mart refreshes and run bookkeeping (ADBC)."""
