"""Sans-I/O retry schedule of the outbound queue.

This module is in charge of when a message that could not be delivered is tried again, when its
sender is told it is late, and when it is given up on. Times are plain seconds, so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

# Mox retries after 7.5 minutes and doubles each time; Postfix's minimal_backoff_time is 300 s.
FIRST_RETRY_SECONDS = 450.0
# Mox caps its back-off at 16 hours; Postfix's maximal_backoff_time is 4000 s. We follow Mox: a day's
# worth of retries against a broken host is plenty, and the lifetime bounds the total.
MAX_RETRY_SECONDS = 16 * 3600.0


@dataclass(frozen=True, slots=True)
class Schedule:
    first_retry: float = FIRST_RETRY_SECONDS
    max_retry: float = MAX_RETRY_SECONDS
    # Postfix's maximal_queue_lifetime is 5 days.
    lifetime: float = 5 * 86400.0
    # Postfix documents delay_warning_time = 4h as the common setting.
    delay_warning: float = 4 * 3600.0

    def next_attempt(self, queued_at: float, attempts: int, now: float) -> float | None:
        """When to try again after `attempts` failed tries, or None when the message must bounce."""
        if now - queued_at >= self.lifetime:
            return None
        delay = min(self.first_retry * (2 ** max(attempts - 1, 0)), self.max_retry)
        return min(now + delay, queued_at + self.lifetime)

    def delay_notice_due(self, queued_at: float, now: float, already_sent: bool) -> bool:
        return not already_sent and self.delay_warning > 0 and now - queued_at >= self.delay_warning
