"""Model runtimes: the only package that imports a TFLite backend."""
