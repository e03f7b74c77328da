"""What is served and how, read on every request: each model's routing table (selectors),
the version router and its circuit breakers, per-version health, the canary policy's
judge, and the compiled input schemas. It imports only ``inference.models`` and the
runtimes' descriptions; every other inference package reads it."""
