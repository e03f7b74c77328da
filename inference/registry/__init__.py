"""Changing the model registry: the services that register, activate, weigh, promote and
roll back versions (each change recorded in the audit log, ``ModelEvent``), the
pre-activation check that proves a version on a worker first, the built-in models, and
the version-health metrics collector. Reads are ``inference.catalog``'s."""
