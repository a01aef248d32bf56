"""A bundle on disk: its layout (:mod:`.layout`, the one module its reader and its writer both import), the manifest
(:mod:`.manifest`, read by :mod:`.reader`, checked by :mod:`.validation`), arrays and input files (:mod:`.arrays`,
:mod:`.inputs`, :mod:`.bounded`), hashing and confinement (:mod:`.fsutil`), the audits (:mod:`.audit`), signing
(:mod:`.signing`), whose bundle it is (:mod:`.trust`) and crash-safe publishing (:mod:`.publish`)."""
