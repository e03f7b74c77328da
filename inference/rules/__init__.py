"""The rules a model version's declarations must satisfy, checked when they are saved and
used when requests are served: the input-schema language (validation and its compiled
checks) and the canary policy. Pure functions of the declarations: it imports nothing else
of inference, so ``inference.models`` and every package can use it."""
