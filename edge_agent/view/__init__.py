"""The local live view: an HTTP page with per-pipeline annotated, redacted MJPEG streams.

``annotate.py`` draws detections, masks and zones; ``tap.py`` takes frames from a pipeline
only while someone watches and renders them through the privacy policy's redaction;
``server.py`` serves the page, the streams, snapshots and state, with a token off loopback.
"""
