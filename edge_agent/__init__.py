"""edge-agent: an inference daemon for edge devices.

Frames from cameras, files and sensors go through a quantized TFLite model on the CPU or an
NPU delegate, through the on-device privacy policy, and only results leave the device over MQTT.
"""

import os

__version__ = "0.1.0"

# OpenCV prints its own "[ WARN:0@...] global cap.cpp ..." lines to stderr on every failed
# camera open (every retry); the camera source says it once in our log instead. Read by
# OpenCV when it loads, so it is set before any module imports cv2; OPENCV_LOG_LEVEL in the
# environment (e.g. WARNING, to debug a camera) wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
