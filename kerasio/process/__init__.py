"""Worker processes: the typed protocol, the client and its session, the server, the registered jobs, the sandbox.

Everything kerasio runs outside the caller's interpreter crosses this wing:
verification in a fresh process, untrusted artifacts under limits and Landlock,
and the few registered jobs (a SavedModel written under TensorFlow for a JAX
model, the training replay of ``--resume``).
"""
