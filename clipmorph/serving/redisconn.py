"""Redis clients that ride out a Redis restart, with redis-py's own retry and exponential backoff.

A restarted Redis closes every open connection; the next command on a pooled connection then
fails although Redis is back (or is still loading its append-only file: BusyLoadingError, a
ConnectionError). redis-py retries such commands on a new connection, waiting longer each time;
`patience` bounds the total wait, after which the error reaches the caller (the API answers 503,
the worker gives up and its supervisor restarts it).
"""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 2.0
RETRIED_ERRORS: list[type[Exception]] = [ConnectionError, TimeoutError]


def retries_for(patience: float, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> int:
    """How many retries of ExponentialBackoff(cap, base) wait at least `patience` seconds in all."""
    retries, waited = 0, 0.0
    while waited < patience:
        retries += 1
        waited += min(cap, base * 2**retries)  # what ExponentialBackoff.compute(retries) sleeps
    return retries


def connect(url: str, patience: float, timeout: float | None = None) -> Redis:
    """A client whose commands keep retrying failed connections for about `patience` seconds.

    `timeout` bounds a connect and a reply (None: wait for replies as long as they take, which
    blocking commands such as the worker's BLPOP need).
    """
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_SECONDS, base=BACKOFF_BASE_SECONDS), retries_for(patience)),
        retry_on_error=RETRIED_ERRORS,
        socket_connect_timeout=timeout or CONNECT_TIMEOUT_SECONDS,
        socket_timeout=timeout,
    )
