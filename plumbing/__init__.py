"""The library every Sluice app shares: problem+json errors and exceptions, the untrusted-JSON
policy, rate limits, request middleware and body limits, overload shedding, client addresses,
log context, Prometheus metrics, pagination, health checks, the broker wire and the embedded
worker. It imports no Sluice app; the apps and ``config`` import it (docs/architecture.md)."""
