"""edge-agent benchmarks: ``python -m benchmarks`` (or ``./dev bench``) writes BENCHMARKS.md."""
