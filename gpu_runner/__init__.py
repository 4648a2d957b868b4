"""The vsrt runner: `python -m gpu_runner --device cpu|cuda:N` does the model work for the service.

Importing this package is cheap; whisperx and torch load inside the running process only.
"""
