"""pybuild: a daemonless, BuildKit-class Dockerfile builder."""

__version__ = "0.1.0"
