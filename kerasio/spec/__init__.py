"""Plain data (numpy only): a model's I/O spec (:mod:`.iospec`), its task (:mod:`.task`), the tolerance table
(:mod:`.tolerances`) and the resource limits of an untrusted worker (:mod:`.limits`)."""
