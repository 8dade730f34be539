"""Events: one model for every file operation, upload completion, audit log, hooks, metrics."""
