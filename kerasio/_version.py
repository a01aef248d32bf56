"""kerasio's version, in a module of its own (the manifest records it; setup.cfg reads it)."""
__version__ = "0.4.0"
