"""The Redis quota backend: several gateway processes share one exact state.

One Lua script admits a request over the whole chain and one settles a lease,
so every decision is atomic on the server. Every key a script touches is
passed in ``KEYS`` and carries the ``{prefix}`` hash tag, so on a cluster all
of them live in one slot. Time comes from the caller's injected clock (an
argument), never from Redis ``TIME``: tests can drive it with a ``ManualClock``,
and the price is that gateway hosts need synchronised clocks (skew between
them moves window boundaries and lease expiry by the skew). Redis's own clock
only garbage-collects keys, with generous margins.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from corral.clock import Clock
from corral.quota._model import (
    Budget,
    BudgetUsage,
    Chain,
    Check,
    Grant,
    Level,
    LevelPlan,
    LevelUsage,
    Plan,
    QuotaUnavailable,
    budget_slot,
    check_amounts,
    make_plan,
    minute_of,
    refusal,
)

log = logging.getLogger(__name__)

_CHECKS: dict[int, Check] = {1: "rpm", 2: "tpm", 3: "concurrency", 4: "budget"}

# A budget counter is a hash: s = spent, r = reserved, l:<lease> = that lease's hold. Each
# level with budgets or a concurrency limit has one sorted set of the leases admitted through
# it, scored by expiry in ms: its size is the level's occupancy, and its expired members are
# the holds to return. RPM/TPM are plain counters per calendar minute.
#
# purge(lz, hashes, now): return the holds of the level's expired leases in the level's
# current budget hashes and drop them from the set. (A hold in a hash of an ended window stays
# counted there; nothing reads an ended window's reservations.)
_PURGE = """
local function purge(lz, hs, now)
  local ids = redis.call('ZRANGEBYSCORE', lz, '-inf', now)
  if #ids == 0 then return end
  for _, id in ipairs(ids) do
    for _, h in ipairs(hs) do
      local amt = redis.call('HGET', h, 'l:' .. id)
      if amt then
        redis.call('HINCRBY', h, 'r', -tonumber(amt))
        redis.call('HDEL', h, 'l:' .. id)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', lz, '-inf', now)
end
"""

# KEYS: lease record, then per level only the keys it uses: rpm (if an RPM limit), tpm (if a
#       TPM limit), its lease set (if budgets or a concurrency limit), then its budget hashes.
# ARGV: now_ms, lease, expiry_ms, want_usd, want_tokens, min_usd, min_tokens, record_ttl_ms,
#       payload (the settle keys, JSON, for other processes), spec: JSON [[rpm, tpm, conc,
#       [[resource (1 usd, 2 tokens), limit, soft, key_ttl_ms], ...]], ...] per level,
#       -1 = no such limit, key_ttl_ms 0 = none. Variable arguments first, so the last two
#       (constant for a chain within a minute) are encoded once per minute.
# One JSON argument instead of four numbers per level and budget: the client packs, and the
# server parses, far fewer arguments per call (cjson decodes in C).
_ADMIT = (
    _PURGE
    + """
-- A retried call (its reply was lost with its connection) answers what the first one granted.
local done = redis.call('HGET', KEYS[1], 'a')
if done then
  local again = {}
  for n in string.gmatch(done, '[^,]+') do again[#again + 1] = tonumber(n) end
  return again
end
local now, lease, expiry = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local want = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local need = {tonumber(ARGV[6]), tonumber(ARGV[7])}
local levels, k = {}, 2
for i, sp in ipairs(cjson.decode(ARGV[10])) do
  local lv = {rpm = sp[1], tpm = sp[2], conc = sp[3], b = {}, hs = {}}
  if lv.rpm >= 0 then lv.rk = KEYS[k]; k = k + 1 end
  if lv.tpm >= 0 then lv.tk = KEYS[k]; k = k + 1 end
  if lv.conc >= 0 or #sp[4] > 0 then lv.lz = KEYS[k]; k = k + 1 end
  for j, bs in ipairs(sp[4]) do
    lv.b[j] = {h = KEYS[k], res = bs[1], limit = bs[2], soft = bs[3], ttl = bs[4]}
    lv.hs[j] = KEYS[k]
    k = k + 1
  end
  levels[i] = lv
end
local grant = {want[1], want[2]}
local out = {1, 0, 0}
for i, lv in ipairs(levels) do
  if lv.rpm >= 0 and tonumber(redis.call('GET', lv.rk) or '0') + 1 > lv.rpm then
    return {0, i, 1, 0, 0}
  end
  if lv.tpm >= 0 and tonumber(redis.call('GET', lv.tk) or '0') + want[2] > lv.tpm then
    return {0, i, 2, 0, 0}
  end
  if lv.lz then purge(lv.lz, lv.hs, now) end
  if lv.conc >= 0 and redis.call('ZCARD', lv.lz) >= lv.conc then return {0, i, 3, 0, 0} end
  for j, b in ipairs(lv.b) do
    local sr = redis.call('HMGET', b.h, 's', 'r')
    local s, r = tonumber(sr[1] or '0'), tonumber(sr[2] or '0')
    local rem = math.max(0, b.limit - s - r)
    if rem <= 0 or rem < need[b.res] then return {0, i, 4, j, rem} end
    if rem < grant[b.res] then grant[b.res] = rem end
    b.r, b.new = r, not sr[2]
    out[#out + 1] = s
    out[#out + 1] = r
  end
end
-- Reserve. A counter's expiry is set when the call creates it (rate keys: INCR answers the
-- increment; budget hashes: they always hold 'r' once they exist), since its window end does
-- not move; a lease set outlives its newest lease. 'r' was read after purging, in this same
-- script, so it is written, not incremented (``held`` follows a counter that appears twice).
local held = {}
for _, lv in ipairs(levels) do
  if lv.rpm >= 0 and redis.call('INCR', lv.rk) == 1 then
    redis.call('PEXPIRE', lv.rk, 120000)
  end
  if lv.tpm >= 0 and redis.call('INCRBY', lv.tk, want[2]) == want[2] then
    redis.call('PEXPIRE', lv.tk, 120000)
  end
  if lv.lz then
    redis.call('ZADD', lv.lz, expiry, lease)
    redis.call('PEXPIRE', lv.lz, ARGV[8])
  end
  for _, b in ipairs(lv.b) do
    local amt = grant[b.res]
    local r = (held[b.h] or b.r) + amt
    held[b.h] = r
    redis.call('HSET', b.h, 'r', string.format('%.0f', r), 'l:' .. lease, amt)
    if b.new and b.ttl > 0 then redis.call('PEXPIRE', b.h, b.ttl) end
  end
end
out[2], out[3] = grant[1], grant[2]
local text = {}
for i, n in ipairs(out) do text[i] = string.format('%.0f', n) end
redis.call('HSET', KEYS[1], 'state', 'open', 'p', ARGV[9], 'a', table.concat(text, ','))
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return out
"""
)

# KEYS: lease record, then the lease's budget hashes, then its lease sets.
# ARGV: lease, usd, tokens, nbudgets, then per budget its resource (1 usd, 2 tokens).
# Returns 1 settled now, -1 no lease record: already settled (the record goes with its
# settlement, so memory holds only open leases), or unknown, or forgotten after settle_grace.
# The record makes it exactly once whoever calls it.
_SETTLE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return -1 end
redis.call('DEL', KEYS[1])
local lease, nb = ARGV[1], tonumber(ARGV[4])
local spend = {ARGV[2], ARGV[3]}
for j = 1, nb do
  local h = KEYS[1 + j]
  local amt = redis.call('HGET', h, 'l:' .. lease)
  if amt then
    redis.call('HINCRBY', h, 'r', -tonumber(amt))
    redis.call('HDEL', h, 'l:' .. lease)
  end
  redis.call('HINCRBY', h, 's', spend[tonumber(ARGV[4 + j])])
end
for k = nb + 2, #KEYS do redis.call('ZREM', KEYS[k], lease) end
return 1
"""

# KEYS: hash, its level's lease set. ARGV: now_ms. Returns {spent, reserved}, not counting the
# holds of expired leases (read only: returning them is the next admission's work, which
# knows every hash of the level).
_READ = """
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  r = r - tonumber(redis.call('HGET', KEYS[1], 'l:' .. id) or '0')
end
return {tonumber(redis.call('HGET', KEYS[1], 's') or '0'), r}
"""

# KEYS: lease record, then the lease sets holding it.
# ARGV: lease, now_ms, new expiry_ms, record_ttl_ms. Moves an open, unexpired lease's expiry
# in every set; returns 0 (and changes nothing) if it is settled, forgotten, or already
# expired in any set (its holds are being returned).
_RENEW = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
local now = tonumber(ARGV[2])
for k = 2, #KEYS do
  local score = redis.call('ZSCORE', KEYS[k], ARGV[1])
  if not score or tonumber(score) <= now then return 0 end
end
for k = 2, #KEYS do
  redis.call('ZADD', KEYS[k], 'XX', ARGV[3], ARGV[1])
  local ttl = redis.call('PTTL', KEYS[k])  -- lease sets always expire; -1 would mean no TTL
  if ttl >= 0 and ttl < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[k], ARGV[4]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: hash. ARGV: spent, ttl_ms (0 = none). Starts a counter no admission or settlement has
# touched yet at the spend read from the store; a counter that exists already is left alone.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'r', 0)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

_RES = {"usd": 1, "tokens": 2}


@dataclass(frozen=True, slots=True)
class _Template:
    """Everything about an admission over one chain that holds for a calendar minute.

    Window ids only change on minute boundaries, so within a minute every admission over
    the same chain has the same counters: their names, the script's spec and the settle
    script's keys are built and RESP-encoded once, and each request encodes only its own
    lease, time and amounts.
    """

    levels: tuple[LevelPlan, ...]
    minute: int
    admit_keys: bytes  # KEYS[2..], encoded
    admit_nkeys: int
    admit_tail: bytes  # ARGV[8..10] (settle payload, record ttl, spec), encoded
    settle_keys: bytes  # KEYS[2..] of the settle script, encoded
    settle_nkeys: int
    settle_tail: bytes  # ARGV[4..] (budget count, resources), encoded
    settle_nargs: int
    zsets: tuple[str, ...]  # the budget and occupancy sets holding a lease (for renew)


class _Script:
    """A Lua script called by its SHA over a pooled connection (``SCRIPT LOAD`` on NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = _bulk(hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def _bulk(value: object) -> bytes:
    """One RESP bulk string: ``bytes`` as they are, anything else as its ``str``."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _evalsha(script: _Script, nkeys: int, parts: list[bytes], nargs: int) -> bytes:
    """``EVALSHA`` in RESP; ``parts`` are encoded keys then arguments, ``nargs`` their count."""
    return b"".join([b"*%d\r\n$7\r\nEVALSHA\r\n" % (nargs + 3), script.sha, _bulk(nkeys), *parts])


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisQuota:
    """Quota state in Redis, shared exactly by every instance pointed at the same server.

    Any Redis error (connection refused, timeout, script error) raises
    ``QuotaUnavailable``: the caller fails closed unless configured otherwise.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        clock: Clock,
        *,
        prefix: str = "corral:q:",
        settle_grace: float = 3600.0,
        max_connections: int = 32,
        timeout: float = 2.0,
        max_local_leases: int = 100_000,
    ) -> None:
        if isinstance(redis, str):
            # A blocking pool: a burst of admissions waits for a connection (up to ``timeout``)
            # instead of failing or opening one socket per request.
            # A pooled connection left over from before a Redis restart fails on its next use:
            # retry once, on a fresh connection, when the connection broke. Both scripts are
            # idempotent per lease (admit answers its first grant again, settle is once), so a
            # retry whose first try did run changes nothing. Timeouts are not retried.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis,
                max_connections=max_connections,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                health_check_interval=5,
            )
            redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._redis: aioredis.Redis = redis
        self._clock = clock
        self._tag = "{" + prefix + "}"
        self._grace = settle_grace
        self._pool = redis.connection_pool
        self._leases: dict[str, _Template] = {}  # insertion order = admission order
        self._max_leases = max_local_leases
        self._templates: dict[Any, _Template] = {}
        self._templates_minute = -1
        self._queue: list[_Queued] = []
        self.batches = 0  # writes of queued commands (for tests and metrics)
        self._senders: set[asyncio.Task[None]] = set()
        self._admit = _Script(_ADMIT)
        self._settle = _Script(_SETTLE)
        self._read = self._redis.register_script(_READ)
        self._seed = self._redis.register_script(_SEED)
        self._renew = self._redis.register_script(_RENEW)

    shared = True

    async def aclose(self) -> None:
        """Close the connection pool (a client passed in is closed too)."""
        await self._redis.aclose()

    def _key(self, name: str) -> str:
        return self._tag + name

    async def admit(
        self,
        chain: Chain,
        *,
        want_usd: int,
        want_tokens: int,
        min_usd: int,
        min_tokens: int,
        lease_ttl: float,
    ) -> Grant:
        """Check and reserve over the whole chain in one Lua script, or raise ``LimitExceeded``."""
        check_amounts(want_usd, want_tokens, min_usd, min_tokens)
        now = self._clock.now()
        t = self._template(chain, now)
        plan = Plan(now, t.minute, t.levels)
        lease_id = uuid.uuid4().hex
        amounts = (want_usd, want_tokens, min_usd, min_tokens)
        command = self._admit_command(t, lease_id, now, lease_ttl, amounts)
        reply = await self._exec(self._admit, command)
        if reply[0] != 0:
            self._remember(lease_id, t)
        else:
            _, level, check, budget, remaining = (int(x) for x in reply)
            slot_need = 0
            if check == 4:
                res = plan.levels[level - 1].budgets[budget - 1].budget.resource
                slot_need = min_usd if res == "usd" else min_tokens
            raise refusal(plan, level - 1, _CHECKS[check], budget - 1, remaining, slot_need)
        return self._grant(plan, lease_id, now + lease_ttl, [int(x) for x in reply])

    def _admit_command(
        self, t: _Template, lease_id: str, now: float, lease_ttl: float, amounts: tuple[int, ...]
    ) -> bytes:
        parts = [
            _bulk(self._key("lease:" + lease_id)),
            t.admit_keys,
            *map(_bulk, (_ms(now), lease_id, _ms(now + lease_ttl), *amounts)),
            _bulk(_ms(lease_ttl + self._grace)),
            t.admit_tail,
        ]
        return _evalsha(self._admit, t.admit_nkeys, parts, t.admit_nkeys + 10)

    def _template(self, chain: Chain, now: float) -> _Template:
        minute = minute_of(now)
        if minute != self._templates_minute:
            self._templates.clear()
            self._templates_minute = minute
        key = tuple(chain)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = self._build_template(make_plan(chain, now))
        return t

    def _build_template(self, plan: Plan) -> _Template:
        keys: list[str] = []
        spec: list[Any] = []
        hashes: list[str] = []
        resources: list[int] = []
        sets: list[str] = []
        for lp in plan.levels:
            lim = lp.limits
            if lim.rpm is not None:
                keys.append(self._key(lp.rpm_key))
            if lim.tpm is not None:
                keys.append(self._key(lp.tpm_key))
            if lim.concurrency is not None or lp.budgets:
                lz = self._key(lp.occupancy_key)
                keys.append(lz)
                sets.append(lz)
            budgets = []
            for slot in lp.budgets:
                h = self._key(slot.counter)
                keys.append(h)
                hashes.append(h)
                b = slot.budget
                res = _RES[b.resource]
                resources.append(res)
                soft = -1 if b.soft_fraction is None else b.soft_fraction
                ttl = 0 if slot.reset_at is None else _ms(slot.reset_at - plan.now + self._grace)
                budgets.append((res, b.limit, soft, ttl))
            spec.append((_opt(lim.rpm), _opt(lim.tpm), _opt(lim.concurrency), budgets))
        payload = {"b": [[h, r] for h, r in zip(hashes, resources, strict=True)], "z": sets}
        settle_keys = hashes + sets
        return _Template(
            levels=plan.levels,
            minute=plan.minute,
            admit_keys=b"".join(map(_bulk, keys)),
            admit_nkeys=len(keys) + 1,
            admit_tail=b"".join(map(_bulk, (_dumps(payload), _dumps(spec)))),
            settle_keys=b"".join(map(_bulk, settle_keys)),
            settle_nkeys=len(settle_keys) + 1,
            settle_tail=b"".join(map(_bulk, (len(resources), *resources))),
            settle_nargs=4 + len(resources),
            zsets=tuple(sets),
        )

    @staticmethod
    def _grant(plan: Plan, lease_id: str, expires_at: float, reply: list[int]) -> Grant:
        counts = iter(reply[3:])
        levels = tuple(
            LevelUsage(
                lp.level,
                tuple(
                    BudgetUsage(s.budget, s.window_id, next(counts), next(counts), s.reset_at)
                    for s in lp.budgets
                ),
            )
            for lp in plan.levels
        )
        return Grant(
            lease_id=lease_id,
            granted_usd=reply[1],
            granted_tokens=reply[2],
            degraded=any(lu.degraded for lu in levels),
            expires_at=expires_at,
            levels=levels,
        )

    def _remember(self, lease_id: str, template: _Template) -> None:
        leases = self._leases
        if len(leases) >= self._max_leases:
            del leases[next(iter(leases))]  # the oldest: most likely settled elsewhere or expired
        leases[lease_id] = template

    async def settle(self, lease_id: str, *, usd: int, tokens: int) -> bool:
        """Replace the lease's reservations with the actual spend, once; later calls do nothing.

        Returns whether this call settled it. A lease that already expired still charges
        its spend (once). A lease record gone (settled, or ``settle_grace`` after expiry)
        means nothing to do.

        A lease admitted by this instance is settled in one round trip: its keys are
        remembered at admission (at most ``max_local_leases`` of them). Any other lease
        (admitted by another process, forgotten, or admitted before a restart) costs one
        more round trip to read its keys from the lease record. Either way the script
        checks the record's state, so the spend is applied exactly once across processes.
        """
        record = self._key("lease:" + lease_id)
        t = self._leases.pop(lease_id, None)
        if t is not None:
            nkeys, keys, tail, nargs = t.settle_nkeys, t.settle_keys, t.settle_tail, t.settle_nargs
        else:
            try:
                raw = await self._redis.hget(record, "p")
            except RedisError as exc:
                raise QuotaUnavailable(_unreachable(exc)) from exc
            if raw is None:
                log.debug("settle of unknown, settled or forgotten lease %s ignored", lease_id)
                return False
            payload = json.loads(raw)
            names = [h for h, _res in payload["b"]] + payload["z"]
            resources = [res for _h, res in payload["b"]]
            nkeys, keys = len(names) + 1, b"".join(map(_bulk, names))
            tail = b"".join(map(_bulk, (len(resources), *resources)))
            nargs = 4 + len(resources)
        parts = [_bulk(record), keys, *map(_bulk, (lease_id, usd, tokens)), tail]
        done = await self._exec(self._settle, _evalsha(self._settle, nkeys, parts, nkeys + nargs))
        if done == -1:
            log.debug("settle of unknown, settled or forgotten lease %s ignored", lease_id)
        return bool(done == 1)

    async def renew(self, lease_id: str, lease_ttl: float) -> bool:
        """Extend an open lease to ``lease_ttl`` from now; False if it expired or was settled.

        Only the instance that admitted a lease renews it (it knows the lease's keys).
        """
        t = self._leases.get(lease_id)
        if t is None:
            return False
        now = self._clock.now()
        args = [lease_id, _ms(now), _ms(now + lease_ttl), _ms(lease_ttl + self._grace)]
        keys = [self._key("lease:" + lease_id), *t.zsets]
        return bool(await self._call(self._renew, keys, args))

    async def _exec(self, script: _Script, command: bytes) -> Any:
        """Send one encoded ``EVALSHA`` and return its reply (``QuotaUnavailable`` on failure).

        Commands issued in the same turn of the event loop go out together, in one write on
        one pooled connection, and their replies are read in order (auto-pipelining): under
        load, a round trip's cost (most of it the kernel's, on a VM) is shared by every
        request admitted or settled in that turn.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, command, future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            self.batches += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        """Write a batch, read its replies; straight on the connection (redis-py's command
        layer cost more than the round trip). A connection broken since its last use (Redis
        restarted) is retried once on a fresh one for the commands not yet answered: both
        scripts are idempotent per lease, so a retry whose first try did run changes nothing.
        A server that lost its scripts gets them loaded again."""
        pending = batch
        for attempt in (1, 2):
            try:
                conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            except RedisError as exc:
                _fail(pending, exc)
                return
            try:
                await conn.send_packed_command(b"".join(command for _, command, _ in pending))
                unloaded = []
                for item in pending:
                    try:
                        _resolve(item[2], await conn.read_response())
                    except NoScriptError:
                        unloaded.append(item)
                    except ResponseError as exc:
                        _fail([item], exc)
                for script, command, future in unloaded:
                    await conn.send_command("SCRIPT", "LOAD", script.source)
                    await conn.read_response()
                    await conn.send_packed_command(command)
                    try:
                        _resolve(future, await conn.read_response())
                    except ResponseError as exc:
                        _fail([(script, command, future)], exc)
                return
            except RedisConnectionError as exc:
                await conn.disconnect()
                pending = [item for item in pending if not item[2].done()]
                if attempt == 2:
                    _fail(pending, exc)
            except (RedisError, OSError) as exc:
                await conn.disconnect()
                _fail(pending, exc)
                return
            finally:
                await self._pool.release(conn)

    async def release(self, lease_id: str) -> bool:
        """Settle with zero spend: the request never reached the provider."""
        return await self.settle(lease_id, usd=0, tokens=0)

    async def sweep(self) -> int:
        """Nothing to do: expired holds are purged by every admission that reads their counter,
        and by ``usage``; Redis expires keys of ended windows itself. Returns 0."""
        return 0

    async def usage(self, level: Level, budget: Budget) -> BudgetUsage:
        """The budget's current window: spent and live (unexpired) reservations."""
        now = self._clock.now()
        slot = budget_slot(level, budget, now)
        h, lz = self._key(slot.counter), self._key(f"occ:{level.key}")
        spent, reserved = await self._call(self._read, [h, lz], [_ms(now)])
        return BudgetUsage(budget, slot.window_id, int(spent), int(reserved), slot.reset_at)

    async def seed(self, level: Level, budget: Budget, window_id: str, spent: int) -> bool:
        """Start a window's counter at ``spent`` unless it exists already; True if it did not.

        Safe to race: whichever process seeds first wins, and an admission or settlement
        that created the counter earlier means its spend is already being counted.
        """
        now = self._clock.now()
        slot = budget_slot(level, budget, now)
        if slot.window_id != window_id:
            return False  # the window rolled over while the spend was being read
        ttl = 0 if slot.reset_at is None else _ms(slot.reset_at - now + self._grace)
        done = await self._call(self._seed, [self._key(slot.counter)], [spent, ttl])
        return bool(done)

    @staticmethod
    async def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            reply = await script(keys=keys, args=args)
        except RedisError as exc:
            raise QuotaUnavailable(_unreachable(exc)) from exc
        return reply


def _unreachable(exc: Exception) -> str:
    return (
        f"budgets and limits cannot be checked: the quota backend (Redis) is unreachable "
        f"({exc.__class__.__name__}: {exc}); requests are refused until it is back "
        "(quota_fail_open = true admits them unchecked)"
    )


_Queued = tuple[_Script, bytes, "asyncio.Future[Any]"]


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if not future.done():  # its request may have been cancelled meanwhile
        future.set_result(reply)


def _fail(items: list[_Queued], exc: Exception) -> None:
    for _, _, future in items:
        if not future.done():
            future.set_exception(QuotaUnavailable(_unreachable(exc)))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _opt(value: int | None) -> int:
    return -1 if value is None else value


__all__ = ["RedisQuota"]
