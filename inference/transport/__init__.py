"""Moving a request from the web process to a worker and its answer back: admission and
queue bounds, the web-side batch (dispatch), the Redis batch lane and its worker bootstep,
the reply inboxes, deadlines, the unary flow and streaming runs."""
