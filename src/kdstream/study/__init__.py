"""The paper's study, end to end: `kdstream reproduce` (and `make demo`)."""
