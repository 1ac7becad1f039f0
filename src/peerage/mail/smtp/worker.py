"""An MX worker process (`python -m peerage.mail.smtp.worker CONFIG SOCKET`), started by the main
process when `[smtp] mx_workers` is above zero.

This module is in charge of the worker's life: load the configuration, build the shared pieces (the
account lookups, DNS, TLS, limits) without touching the schema, listen on the MX port beside the main
process, drop root for `[server] user` as the main process does (after binding, before serving), and
exit when told to (SIGTERM) or when the main process goes away (its channel closes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from peerage.config import load_config


async def run(config_path: Path, socket_path: Path) -> None:
    from peerage.mail.service import MailService
    from peerage.ops import privileges
    from peerage.server import Host

    config = load_config(config_path)
    account = privileges.resolve(config)
    host = Host(config)
    service = MailService()

    def drop() -> None:
        if account is not None:
            privileges.drop(config, account)

    await service.start_worker(host, socket_path, before_ready=drop)
    assert service.worker_channel is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closed = asyncio.create_task(service.worker_channel.closed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    stopped.cancel()
    await service.stop()
    await host.store.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m peerage.mail.smtp.worker CONFIG SOCKET", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(Path(args[0]), Path(args[1])))
    else:
        uvloop.run(run(Path(args[0]), Path(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
