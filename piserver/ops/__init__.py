"""What the server tells its operator: logs, metrics, notifications, readiness, audit."""
