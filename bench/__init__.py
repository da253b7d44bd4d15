"""Load benchmark: notify against a minimal pure-ASGI SSE broadcaster.

Run ``python -m bench.run`` (see docs/PERFORMANCE.md).
"""
