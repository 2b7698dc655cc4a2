"""The HTTP server behind `python -m pipeline.serve`: TF Serving's REST API and the Open Inference Protocol.

    errors.py      the 4xx errors a request can end with, and 503 while busy
    limits.py      what one request, and all requests at once, may cost (images, pixels, body bytes)
    models.py      ModelRepository: every model under saved_models/, its newest versions loaded, polled
    batching.py    Batcher: one model call per request, or per window of concurrent requests
    tensors.py     JSON values (numbers, {"b64": ...} images) -> pixel arrays, checked
    shared.py      what handlers share: the app's state, reading a body within limits, JSON in and out
    tf_serving.py  /v1/models/... (TF Serving's REST API)
    v2.py          /v2/... (Open Inference Protocol, KServe v2, Triton's binary tensor extension)
    app.py         build_app: the routes, the per-request log line, errors as JSON
"""
