"""``python -m kerasio.process``: a worker (see :mod:`kerasio.process.server`)."""
from kerasio.process.server import serve

if __name__ == "__main__":
    serve()
