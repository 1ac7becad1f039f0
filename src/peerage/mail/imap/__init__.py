"""IMAP4rev2 access to the mailbox store: a sans-I/O parser (``parser``), MIME views (``mime``),
SEARCH/SORT/THREAD (``search``), the per-connection protocol engine (``server``) and the listening
service (``service``)."""
