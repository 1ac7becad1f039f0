"""contrib/fail2ban's filter, run by the real fail2ban-regex (Debian's fail2ban) against peerage's own
log after failed logins over IMAP, SMTP and XMPP from distinct addresses."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from tests.auth.clients import imap_login, smtp_auth, xmpp_login
from tests.auth.conftest import ADDRESS, ALICE, DOMAIN
from tests.harness import PeerageServer, require_binary

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "peerage.conf"


async def test_fail2ban_regex_matches_every_failure(server: PeerageServer, tmp_path: Path) -> None:
    require_binary("fail2ban-regex")
    offset = server.log_path.stat().st_size
    assert b"NO" in await imap_login(ADDRESS, "127.0.7.40", ALICE, "wrong")
    assert await asyncio.to_thread(smtp_auth, ADDRESS, "127.0.7.41", ALICE, "wrong") == 535
    assert await asyncio.to_thread(smtp_auth, ADDRESS, "127.0.7.42", "nobody", "wrong") == 535
    assert "<failure" in await xmpp_login(ADDRESS, DOMAIN, "127.0.7.43", "alice", "wrong")
    log = tmp_path / "peerage.log"
    log.write_text(server.log_text(offset))
    result = subprocess.run(["fail2ban-regex", "--print-all-matched", str(log), str(FILTER)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    matched = re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", result.stdout)
    assert matched and int(matched.group(1)) == 4, result.stdout
    for source in ("127.0.7.40", "127.0.7.41", "127.0.7.42", "127.0.7.43"):
        assert source in result.stdout
