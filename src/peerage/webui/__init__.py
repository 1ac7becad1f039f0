"""The browser pages' built files. ``dist/mail/`` is the webmail, built by npm from ``webui/`` at the
top of the repository (see README) and served by the web service at ``/mail/``."""
