"""What a worker runs: the model cache, the dynamic batcher and the outcome of each request.
The runtimes (``inference.runtimes``), engines (``inference.engines``) and handler classes
(``inference.handlers``) keep their paths because model versions store them as dotted
paths."""
