"""Rate limiters and the authentication throttle, on an injected clock."""

from peerage.config import LimitsConfig
from peerage.net.limits import AUTH_FAILURE_DELAY, AuthThrottle, ConnectionCounter, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=4, clock=clock)
    assert all(limiter.allow("ip") for _ in range(4))
    assert not limiter.allow("ip")
    assert limiter.allow("other")
    clock.now += 1.0
    assert limiter.allow("ip") and limiter.allow("ip")
    assert not limiter.allow("ip")


def test_auth_throttle_delays_then_refuses_then_forgets() -> None:
    clock = Clock()
    throttle = AuthThrottle(LimitsConfig(auth_failures_per_ip=3, auth_failures_per_account=100,
                                         auth_failure_window=60), clock=clock)
    for _ in range(3):
        assert throttle.check("1.2.3.4", "a@x") == 0.0
        throttle.failure("1.2.3.4", "a@x")
    assert throttle.check("1.2.3.4", "a@x") == AUTH_FAILURE_DELAY
    for _ in range(3):
        throttle.failure("1.2.3.4", "a@x")
    assert throttle.check("1.2.3.4", "a@x") is None
    assert throttle.check("5.6.7.8", "b@x") == 0.0
    clock.now += 61
    assert throttle.check("1.2.3.4", "a@x") == 0.0


def test_auth_throttle_per_account_across_addresses_delays_never_refuses() -> None:
    throttle = AuthThrottle(LimitsConfig(auth_failures_per_ip=100, auth_failures_per_account=2), clock=Clock())
    for _ in range(4):  # one address: refused after 2 * 2, and nobody else notices
        throttle.failure("10.0.0.1", "victim@x")
    assert throttle.check("10.0.0.1", "victim@x") is None
    assert throttle.check("10.0.0.3", "victim@x") == 0.0
    for n in range(100):  # many addresses: the account is slowed down, never locked
        throttle.failure(f"10.0.1.{n}", "victim@x")
    assert throttle.check("10.0.0.3", "victim@x") == AUTH_FAILURE_DELAY


def test_connection_counter() -> None:
    counter = ConnectionCounter(per_ip=2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    counter.release("a")
    assert counter.acquire("a")
    assert counter.count("a") == 2
