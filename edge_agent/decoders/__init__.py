"""Decoders: pure numpy functions from output tensors to detections, classes or values."""
