"""sync: signed operations, range-based reconciliation between neighbours, the durable op store."""
