"""What runs beside the sessions and watches them: usage, budgets, metrics, notifications."""
