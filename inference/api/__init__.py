"""The inference API: the HTTP views (``/v1/models``, the registry endpoints), their
serializers, the OpenAI and KServe v2 protocols, the WebSocket consumers and their URL
routes, and the unary front door the unary server runs. It turns requests into calls on
the registry and the transport, and answers; nothing below imports it."""
