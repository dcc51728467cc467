"""How a job's end is decided exactly once: finished (by its worker) or cancelled (by DELETE).

Without this a DELETE racing a finishing job could answer 204 and delete the
files while the worker marked the job finished: the job then read "finished"
and its result 410. Now both sides go through one Redis key per job, set by a
Lua script (atomic in Redis) only when no end was decided yet:

- DELETE runs `cancel`: if the job already ended (the key says "finished", or
  RQ's status is finished/failed/stopped/canceled) it changes nothing and
  reports that end; otherwise it records "cancelled" and the DELETE wins.
- The worker runs `finish` after writing the output and before returning: if
  a DELETE won, it deletes the output and ends the job as cancelled; else it
  records "finished" and every later DELETE is refused (409, the finish won).

The API reads the key too (jobstate), so a job reads "cancelled" from the
moment the DELETE returns, whatever RQ's own status still says.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq.job import Job

FINISHED = "finished"
CANCELLED = "cancelled"
KEY_PREFIX = "clipmorph:job-end:"

# KEYS[1] = the end key, KEYS[2] = RQ's job hash; ARGV[1] = TTL in seconds.
# -> {end, changed}: the job's end (or its RQ status when it is still going), and 1 when this call cancelled it.
_CANCEL = """
local ended = redis.call('GET', KEYS[1])
if ended then return {ended, 0} end
local status = redis.call('HGET', KEYS[2], 'status')
if status == false then return {'missing', 0} end
if status == 'finished' or status == 'failed' or status == 'stopped' or status == 'canceled' then
  return {status, 0}
end
redis.call('SET', KEYS[1], 'cancelled', 'EX', ARGV[1])
return {'cancelled', 1}
"""

# KEYS[1] = the end key; ARGV[1] = TTL in seconds. -> the job's end: "finished" unless a DELETE won first.
_FINISH = """
local ended = redis.call('GET', KEYS[1])
if ended then return ended end
redis.call('SET', KEYS[1], 'finished', 'EX', ARGV[1])
return 'finished'
"""


@dataclass(frozen=True)
class CancelOutcome:
    state: str  # "cancelled", "finished", or RQ's status of a job that ended otherwise ("failed", ...)
    changed: bool  # this call cancelled the job (it was queued or running)


def _key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def cancel(connection: Redis, job_id: str, ttl: int) -> CancelOutcome:
    """Record that the job is cancelled unless it already ended (then report how it ended)."""
    script = connection.register_script(_CANCEL)
    state, changed = script(keys=[_key(job_id), Job.key_for(job_id)], args=[ttl])
    return CancelOutcome(_text(state), bool(changed))


def finish(connection: Redis, job_id: str, ttl: int) -> str:
    """Record that the job finished unless a DELETE came first; -> FINISHED or CANCELLED."""
    return _text(connection.register_script(_FINISH)(keys=[_key(job_id)], args=[ttl]))


def ended(connection: Redis, job_id: str) -> str | None:
    """FINISHED, CANCELLED, or None while no end is decided."""
    value = connection.get(_key(job_id))
    return _text(value) if value is not None else None


def is_cancelled(connection: Redis, job_id: str) -> bool:
    return ended(connection, job_id) == CANCELLED
