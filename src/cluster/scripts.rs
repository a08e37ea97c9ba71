//! Step 4 of the flow, admission across replicas: the Lua scripts Redis runs for each decision, on its own clock.
//!
//! # Keys
//!
//! | key | type | what |
//! |---|---|---|
//! | `sluice:replicas` | sorted set | replica id → its lease's end (µs, Redis time) |
//! | `sluice:owners` | hash | replica id → `INCARNATION:LEASE_END` of the process holding it (two live processes cannot share an id) |
//! | `sluice:epoch` | string | which Redis this is: a new, restarted-empty or flushed Redis has none, and the first heartbeat to see that names it |
//! | `P:n` | hash | replica id → its live sessions of scope `P` (with the slot it is asking for, if it was asking when it published: never one too few) |
//! | `P:a` | hash | replica id → 1 while its count in `P:n` includes a slot it was asking for, not granted (what a replica reports as the cluster's sessions leaves it out) |
//! | `P:v` | hash | replica id → `INCARNATION:VERSION` of that count (a count is only replaced by a newer one) |
//! | `P:r` | string | the scope's GCRA theoretical arrival time (µs) |
//! | `P:p` | string | until when (µs) the edge asked that the scope send nothing (`Retry-After`), expiring then |
//! | `P:f`, `P:vt` | hash, string | the edge's fair queuing across replicas: each tenant's finish tag, and the virtual time |
//! | `P:w` | sorted set | replica id → when the client at the head of its queue arrived (µs, Redis time) |
//! | `P:c` | hash | replica id → the session cap its head's last ask decided with (an earlier head its own cap holds back does not hold back another replica's) |
//!
//! `P` is `sluice:t:TENANT` for a tenant and `sluice:edge` for the `[edge]` ceiling;
//! `sluice:freed:…` (the same suffix) is the channel a replica waiting for capacity
//! listens on. Every time is Redis's `TIME` in microseconds; no script reads a replica's
//! clock. Numbers go back to Redis through `string.format('%d')` (Lua's default
//! number format would round 16-digit microseconds).
//!
//! The keys a script touches are computed from `P` inside the heartbeat, so this layout
//! needs one Redis (or a Sentinel-managed master), not Redis Cluster.

use std::sync::LazyLock;

use redis::Script;

/// Shared by every script: `now`, and the helpers below.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function s(x) return string.format('%d', x) end
local function alive(replicas, r)
  local e = redis.call('ZSCORE', replicas, r)
  return e and tonumber(e) > now
end
-- nil when this replica knows the Redis it talks to (it republished its counts
-- there); else 'epoch': republish first.
local function epoch_state(key, known)
  local ep = redis.call('GET', key)
  if not ep or ep ~= known then return 'epoch', 0 end
  return nil, 0
end
-- Sets replica me's count of a scope, and whether it includes a slot me is asking
-- for (`asking`, '1'; in `a`), unless Redis holds a newer one of the same
-- incarnation; returns how much lower the count is now (0: not lower, or not set).
local function apply(n, v, a, me, count, asking, inc, version)
  local old = redis.call('HGET', v, me)
  if old then
    local oi, ov = string.match(old, '^(.*):(%d+)$')
    if oi == inc and tonumber(ov) >= version then return 0 end
  end
  local before = tonumber(redis.call('HGET', n, me) or '0')
  redis.call('HSET', n, me, count)
  redis.call('HSET', v, me, inc .. ':' .. s(version))
  if asking == '1' then redis.call('HSET', a, me, 1) else redis.call('HDEL', a, me) end
  return before - tonumber(count)
end
-- The counts of the other live replicas (dead ones' are dropped): their sum, which
-- decisions use (it includes slots being asked for), and how many of those are slots
-- being asked for (left out of the sessions a replica reports).
local function others(n, v, a, replicas, me)
  local total, asked = 0, 0
  local rows = redis.call('HGETALL', n)
  for i = 1, #rows, 2 do
    local r = rows[i]
    if r ~= me then
      if alive(replicas, r) then
        total = total + tonumber(rows[i + 1])
        asked = asked + tonumber(redis.call('HGET', a, r) or '0')
      else
        redis.call('HDEL', n, r)
        redis.call('HDEL', v, r)
        redis.call('HDEL', a, r)
      end
    end
  end
  return total, asked
end
-- Whether another live replica's head arrived before `before`.
local function behind(w, replicas, me, before)
  local rows = redis.call('ZRANGEBYSCORE', w, '-inf', '(' .. s(before))
  for _, r in ipairs(rows) do
    if r ~= me then
      if alive(replicas, r) then return true end
      redis.call('ZREM', w, r)
    end
  end
  return false
end
-- Whether another live replica's head arrived before `before` and could take a slot
-- now under its own cap (`caps`: replica id -> the cap of its head's last ask): a head
-- its own cap holds back (replicas between two reloads disagree on the cap) does not
-- hold back one whose cap has room. `total`: the scope's sessions with the slot asked.
local function behind_fitting(w, caps, replicas, me, before, total)
  local rows = redis.call('ZRANGEBYSCORE', w, '-inf', '(' .. s(before))
  for _, r in ipairs(rows) do
    if r ~= me then
      if alive(replicas, r) then
        local cap = tonumber(redis.call('HGET', caps, r) or '-1')
        if cap < 0 or total <= cap then return true end
      else
        redis.call('ZREM', w, r)
      end
    end
  end
  return false
end
-- The head of me's queue got what it waited for: the client after it (`next`, its
-- arrival; -1 or nil: none) is me's head among the waiters from now, in the same step,
-- so that another replica's later client cannot slip in before it; else me is out of
-- the waiters. The others may ask again.
local function served(w, me, channel, next)
  local mine = 0
  if next and next >= 0 then
    redis.call('ZADD', w, s(next), me)
    mine = 1
  else
    redis.call('ZREM', w, me)
  end
  if redis.call('ZCARD', w) > mine then redis.call('PUBLISH', channel, 't') end
end
-- The start tag of tenant t's next turn at a fair scope (start-time fair queuing
-- across replicas): max(virtual time, t's last finish tag).
local function start_tag(f, vt, t)
  return math.max(tonumber(redis.call('GET', vt) or '0'), tonumber(redis.call('HGET', f, t) or '0'))
end
-- Tenant t (weight w) got the turn that started at tag: virtual time moves to it, t's
-- finish tag to tag + 10000 / w.
local function turned(f, vt, t, w, tag)
  redis.call('HSET', f, t, s(tag + math.floor(10000 / math.max(w, 1))))
  redis.call('PEXPIRE', f, 3600000)
  redis.call('SET', vt, s(tag), 'PX', 3600000)
end
-- At a fair scope, after a turn: the start tag of the arbiter's turn after it, for
-- tenant `t` (-1: none, '').
local function then_tag(f, vt, t)
  if t == nil or t == '' then return -1 end
  return start_tag(f, vt, t)
end
-- Takes a GCRA token: the new TAT, or 0 and when one is ready.
local function take(r, interval, tolerance)
  local tat = tonumber(redis.call('GET', r) or '0')
  if tat - tolerance > now then return 0, tat - tolerance end
  tat = math.max(tat, now) + interval
  redis.call('SET', r, s(tat), 'PX', s(math.floor((tat - now) / 1000) + 1000))
  return tat, 0
end
";

/// A session slot (and, with `take`, a token with it).
///
/// KEYS: replicas, epoch, P:n, P:v, P:r, P:w, P:p, P:f, P:vt, P:c, P:a.
/// ARGV: me, epoch, count (this replica's, the slot asked for included), incarnation,
/// version, cap, interval µs, tolerance µs, head µs (-1: no FIFO), take (0/1), lease µs,
/// channel, tenant ('' : not fair-queued), weight, the arrival of the client after the
/// head (µs, -1: none; registered as the head when the head is served), the tenant of
/// the edge arbiter's turn after this one ('': none; registered with its start tag when
/// this turn is served). A tenant scope keeps FIFO by its
/// heads' arrivals; the edge orders the replicas' arbiters by their next tenant's start
/// tag (start-time fair queuing across replicas).
/// Returns `{'ok', now, cluster sessions, tat (0: no token), token ready at}`,
/// `{'full', now, cluster sessions}`, `{'turn', now, 0}`, `{'paused', now, until}` or
/// `{'epoch', now, 0}`; the sessions leave out the slots other replicas published while
/// asking for them, and the one asked for here unless granted.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local st = epoch_state(KEYS[2], ARGV[2])
if st then return {{st, now, 0}} end
local me, head, interval = ARGV[1], tonumber(ARGV[9]), tonumber(ARGV[7])
local paused = tonumber(redis.call('GET', KEYS[7]) or '0')
if paused > now then return {{'paused', now, paused}} end
local tenant, tag = ARGV[13], 0
local total, asked = others(KEYS[3], KEYS[4], KEYS[11], KEYS[1], me)
total = total + tonumber(ARGV[3])
if head >= 0 then
  local ttl = s(math.floor(tonumber(ARGV[11]) / 1000))
  redis.call('ZADD', KEYS[6], s(head), me)
  redis.call('PEXPIRE', KEYS[6], ttl)
  redis.call('HSET', KEYS[10], me, ARGV[6])
  redis.call('PEXPIRE', KEYS[10], ttl)
  if behind_fitting(KEYS[6], KEYS[10], KEYS[1], me, head - interval, total) then
    return {{'turn', now, 0}}
  end
elseif tenant ~= '' then
  tag = start_tag(KEYS[8], KEYS[9], tenant)
  redis.call('ZADD', KEYS[6], s(tag), me)
  redis.call('PEXPIRE', KEYS[6], s(math.floor(tonumber(ARGV[11]) / 1000)))
  if behind(KEYS[6], KEYS[1], me, tag) then return {{'turn', now, 0}} end
end
if total > tonumber(ARGV[6]) then return {{'full', now, total - asked - 1}} end
apply(KEYS[3], KEYS[4], KEYS[11], me, ARGV[3], '0', ARGV[4], tonumber(ARGV[5]))
-- Granted: a count this replica published while it asked (newer than the one above,
-- or not) holds this slot as a session now.
redis.call('HDEL', KEYS[11], me)
local tat, ready = 0, 0
if ARGV[10] == '1' then
  tat, ready = take(KEYS[5], interval, tonumber(ARGV[8]))
  if tat > 0 and head >= 0 then served(KEYS[6], me, ARGV[12], tonumber(ARGV[15])) end
  if tat > 0 and tenant ~= '' then
    turned(KEYS[8], KEYS[9], tenant, tonumber(ARGV[14]), tag)
    served(KEYS[6], me, ARGV[12], then_tag(KEYS[8], KEYS[9], ARGV[16]))
  end
end
return {{'ok', now, total - asked, tat, ready}}"
    ))
});

/// A handshake token.
///
/// KEYS: replicas, epoch, P:r, P:w, P:p, P:f, P:vt.
/// ARGV: me, epoch, interval µs, tolerance µs, head µs (-1: no FIFO), channel, tenant
/// ('': not fair-queued), weight, the arrival of the client after the head (µs, -1:
/// none), the tenant of the edge arbiter's turn after this one ('': none), whether the
/// head's slot was granted in FIFO order ('1': its place is decided, not checked again).
/// Returns `{'ok', now, tat}`, `{'rate', now, ready at}`, `{'turn', now, 0}`,
/// `{'paused', now, until}` or `{'epoch', now, 0}`.
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local st = epoch_state(KEYS[2], ARGV[2])
if st then return {{st, now, 0}} end
local me, head, interval = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[3])
local paused = tonumber(redis.call('GET', KEYS[5]) or '0')
if paused > now then return {{'paused', now, paused}} end
if head >= 0 and ARGV[11] ~= '1' and behind(KEYS[4], KEYS[1], me, head - interval) then return {{'turn', now, 0}} end
local tenant, tag = ARGV[7], 0
if head < 0 and tenant ~= '' then
  tag = start_tag(KEYS[6], KEYS[7], tenant)
  redis.call('ZADD', KEYS[4], s(tag), me)
  if behind(KEYS[4], KEYS[1], me, tag) then return {{'turn', now, 0}} end
end
local tat, ready = take(KEYS[3], interval, tonumber(ARGV[4]))
if tat == 0 then return {{'rate', now, ready}} end
if head >= 0 then served(KEYS[4], me, ARGV[6], tonumber(ARGV[9])) end
if head < 0 and tenant ~= '' then
  turned(KEYS[6], KEYS[7], tenant, tonumber(ARGV[8]), tag)
  served(KEYS[4], me, ARGV[6], then_tag(KEYS[6], KEYS[7], ARGV[10]))
end
return {{'ok', now, tat}}"
    ))
});

/// Gives back a token that was not used, unless another was taken since.
///
/// KEYS: P:r. ARGV: tat the take left, interval µs.
pub(super) static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], s(tonumber(ARGV[1]) - tonumber(ARGV[2])), 'KEEPTTL')
end
return 0"
    ))
});

/// Publishes this replica's count of a scope (after releases) and, when it went down
/// and some replica waits, tells the waiting replicas (a count that did not go down —
/// an ask that was refused — sends no notice: refusals must not wake each other).
///
/// KEYS: P:n, P:v, P:w, P:a. ARGV: me, count, incarnation, version, channel, whether
/// the count includes a slot being asked for (0/1).
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local freed = apply(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2], ARGV[6], ARGV[3], tonumber(ARGV[4]))
if freed > 0 and redis.call('ZCARD', KEYS[3]) > 0 then redis.call('PUBLISH', ARGV[5], 'f') end
return 0"
    ))
});

/// Renews this replica's lease and republishes every count it holds; makes a new
/// epoch when Redis has none (new, restarted empty, flushed).
///
/// KEYS: replicas, epoch, owners. ARGV: me, lease µs, 1 if this process held its id
/// before (0: new), epoch id if new, this
/// process's incarnation, then per scope `P`, count, version, the scope's incarnation,
/// whether this replica waits on it (0/1), whether the count includes a slot being
/// asked for (0/1).
/// Returns `{now, epoch, {live replica ids}, {cluster sessions per scope}}` (slots
/// being asked for left out), or
/// `{now, 'conflict', incarnation}` when this process held its id before and another
/// live process has taken it since (nothing is written then).
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local me, lease = ARGV[1], tonumber(ARGV[2])
-- A new process takes its id over at once (a restarted replica); one that held it
-- before and finds it taken by another live process yields (two processes, one id).
local owner = redis.call('HGET', KEYS[3], me)
if owner and ARGV[3] == '1' then
  local oi, oe = string.match(owner, '^(.*):(%d+)$')
  if oi ~= ARGV[5] and tonumber(oe) > now then return {{now, 'conflict', oi}} end
end
redis.call('HSET', KEYS[3], me, ARGV[5] .. ':' .. s(now + lease))
redis.call('ZADD', KEYS[1], s(now + lease), me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', s(now))
local ep = redis.call('GET', KEYS[2])
if not ep then
  ep = ARGV[4]
  redis.call('SET', KEYS[2], ep)
end
local totals = {{}}
for i = 6, #ARGV, 6 do
  local n, v, a = ARGV[i] .. ':n', ARGV[i] .. ':v', ARGV[i] .. ':a'
  apply(n, v, a, me, ARGV[i + 1], ARGV[i + 5], ARGV[i + 3], tonumber(ARGV[i + 2]))
  -- Nobody of this replica waits: no head of it among the waiters (a stray one, from
  -- an ask whose answer was lost, goes within a heartbeat).
  if ARGV[i + 4] == '0' then redis.call('ZREM', ARGV[i] .. ':w', me) end
  redis.call('PEXPIRE', n, s(math.floor(3 * lease / 1000)))
  redis.call('PEXPIRE', v, s(math.floor(3 * lease / 1000)))
  redis.call('PEXPIRE', a, s(math.floor(3 * lease / 1000)))
  local mine = tonumber(redis.call('HGET', n, me) or '0') - tonumber(redis.call('HGET', a, me) or '0')
  local total, asked = others(n, v, a, KEYS[1], me)
  table.insert(totals, total - asked + mine)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. s(now), '+inf')
return {{now, ep, live, totals}}"
    ))
});

/// A replica leaves (after its drain): its lease and counts go at once, and replicas
/// waiting on its scopes are told.
///
/// KEYS: replicas. ARGV: me, then per scope `P`, channel.
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HDEL', ARGV[i] .. ':n', ARGV[1])
  redis.call('HDEL', ARGV[i] .. ':v', ARGV[1])
  redis.call('HDEL', ARGV[i] .. ':a', ARGV[1])
  redis.call('ZREM', ARGV[i] .. ':w', ARGV[1])
  redis.call('PUBLISH', ARGV[i + 1], 'l')
end
return 0"
    ))
});

/// The head this replica registered left (its queue emptied): out of the waiters,
/// unless a newer head was registered since.
///
/// KEYS: P:w. ARGV: me, head µs it registered (-1: whatever it registered), channel.
pub(super) static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and (ARGV[2] == '-1' or tonumber(score) == tonumber(ARGV[2])) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if redis.call('ZCARD', KEYS[1]) > 0 then redis.call('PUBLISH', ARGV[3], 'w') end
end
return 0"
    ))
});

/// The edge asked that a scope send nothing until a time: every replica's next decision
/// for it says `paused` until then.
///
/// KEYS: P:p. ARGV: until µs (Redis time).
pub(super) static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}
local till = tonumber(ARGV[1])
if till > now and till > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], s(till), 'PX', s(math.floor((till - now) / 1000) + 1))
end
return 0"
    ))
});
