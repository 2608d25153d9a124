"""The Bytewax pipeline: sources -> decide -> sinks, and the runner for worker processes."""
