"""Operations: what a provider needs around the protocol services.

This package is in charge of certificate checks and reloads, privilege dropping, the systemd unit,
metrics and health, backups and exports, ACME, and `peerage check`. Each module opens with what it is in
charge of; none of them is needed for the protocols to run.
"""
