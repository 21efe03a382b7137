"""``muisti``: the operator's command line (API keys, topics and lag, dead-letter replay,
data-subject requests, exports, the container health check).

Pure pieces (lag arithmetic, dead-letter selection, request bodies, job states) live in their
own modules beside the thin Kafka, HTTP and terminal adapters, so unit tests drive them
without a broker or a server.
"""
