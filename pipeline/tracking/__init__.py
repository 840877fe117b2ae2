"""MLflow tracking: the tracker, its outage guard, metric names, system metrics and the store."""
