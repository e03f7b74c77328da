"""The model registry: reads (routing tables, selectors), writes (services, with the audit
log in ``ModelEvent``), the version router and circuit breakers, per-version health, the
canary policy, shadow comparisons, the pre-activation checks, input schemas and the
built-in models. The rows themselves are ``inference.models``."""
