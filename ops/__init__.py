"""darkroom-ops: the operators' CLI (``ops.cli:main``)."""
