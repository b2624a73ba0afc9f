"""The API's routes, one router per resource: jobs, references, operations (health, readiness, metrics)."""
