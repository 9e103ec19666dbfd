"""MQTT: the only package that imports paho-mqtt."""
