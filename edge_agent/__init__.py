"""edge-agent: an inference daemon for edge devices.

Frames from cameras, files and sensors go through a quantized TFLite model on the CPU or an
NPU delegate, through the on-device privacy policy, and only results leave the device over MQTT.
"""

__version__ = "0.1.0"
