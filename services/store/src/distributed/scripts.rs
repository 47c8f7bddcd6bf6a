//! Lua scripts: each multi-key change in Redis runs as one script, so it is atomic and no
//! other client sees half of it (the distributed counterpart of one SQLite transaction).
//!
//! The key names follow [`super::keys`]. Scripts that fan an event out to webhook endpoints
//! compute endpoint and delivery keys from the namespace, which is why the keyspace must live
//! on one Redis node.

use std::sync::LazyLock;

use redis::Script;

/// Helpers prepended to scripts that need them.
pub(crate) const HELPERS: &str = r#"
local function load_recipients(key)
  local flat = redis.call('HGETALL', key)
  local list = {}
  for i = 1, #flat, 2 do
    list[#list + 1] = { pos = tonumber(flat[i]), r = cjson.decode(flat[i + 1]) }
  end
  table.sort(list, function(a, b) return a.pos < b.pos end)
  return list
end

-- Not final: a claim hands these to the worker (a `scheduled` one once its time has come).
local function is_pending(status)
  return status == 'queued' or status == 'scheduled' or status == 'deferred'
end

-- Retention (`storage.retention`): a message's keys expire `ttl` seconds after its last change
-- only once it is finished; while any recipient is pending they are kept, however old.
local function settle_expiry(msg, ttl)
  local pending = false
  for _, e in ipairs(load_recipients(msg .. ':rcpt')) do
    if is_pending(e.r.status) then pending = true break end
  end
  for _, k in ipairs({msg, msg .. ':rcpt', msg .. ':events', msg .. ':raw', msg .. ':eng', msg .. ':copies'}) do
    if pending then redis.call('PERSIST', k) else redis.call('EXPIRE', k, ttl) end
  end
end

-- Lists an address on the suppression list from its stored JSON entry ('' lists nothing); an
-- existing entry is kept.
local function list_suppression(ns, entry)
  if entry == '' then return end
  local s = cjson.decode(entry)
  if redis.call('HSETNX', ns .. ':suppressions', s.email, entry) == 1 then
    redis.call('ZADD', ns .. ':suppressions:index', string.format('%d', s.created_at), s.email)
  end
end

-- Queues one webhook delivery per endpoint subscribed to the event type (the outbox),
-- in the same script that stores the event.
local function fanout(ns, event_id, event_type, body, now)
  -- The pull API's log of every event (`GET /v1/events`).
  redis.call('ZADD', ns .. ':events:log', 0, string.format('%015d', now) .. ':' .. event_id)
  redis.call('HSET', ns .. ':events:body', event_id, body)
  for _, wid in ipairs(redis.call('ZRANGE', ns .. ':webhooks', 0, -1)) do
    local hook = redis.call('HMGET', ns .. ':webhook:' .. wid, 'events', 'disabled_at')
    local kinds = hook[1]
    -- A disabled endpoint gets no new deliveries.
    if kinds and not hook[2] then
      local list = cjson.decode(kinds)
      local wanted = #list == 0
      for _, k in ipairs(list) do
        if k == event_type then wanted = true end
      end
      if wanted then
        local n = redis.call('INCR', ns .. ':seq:whd')
        local did = 'whd_' .. n
        redis.call('HSET', ns .. ':whd:' .. did, 'webhook_id', wid, 'event_id', event_id, 'body', body,
          'state', 'pending', 'attempts', 0, 'next_attempt_at', now, 'created_at', now)
        redis.call('ZADD', ns .. ':webhook:' .. wid .. ':log', n, did)
        redis.call('ZADD', ns .. ':outbox', now, did)
        redis.call('SADD', ns .. ':webhook:' .. wid .. ':pending', did)
      end
    end
  end
end
"#;

pub(crate) fn with_helpers(body: &str) -> Script {
    Script::new(&format!("{HELPERS}\n{body}"))
}

/// Takes the lease on a job and returns its pending recipients.
///
/// KEYS: message, recipients, lease, jobs. ARGV: domain, token, lease ms, now ms, jobs member.
/// Returns `{'missing'}` (message gone), `{'done'}` (nothing pending), `{'held', pttl}` (another
/// claim holds the lease), `{'early', ms}` (nothing due yet), or
/// `{'claimed', created_at, request, message_id_header, sandbox, email, attempts, position, …}`
/// (`sandbox` is `'1'` or `'0'`; `'0'` for messages stored before the field existed).
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[5])
  return {'missing'}
end
local now = tonumber(ARGV[4])
local pending = {}
local earliest = nil
for _, e in ipairs(load_recipients(KEYS[2])) do
  if e.r.domain == ARGV[1] and is_pending(e.r.status) then
    pending[#pending + 1] = e.r.email
    pending[#pending + 1] = tostring(e.r.attempts or 0)
    pending[#pending + 1] = tostring(e.pos)
    local due = e.r.next_attempt_at or 0
    if earliest == nil or due < earliest then earliest = due end
  end
end
if earliest == nil then
  redis.call('SREM', KEYS[4], ARGV[5])
  return {'done'}
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
  return {'held', tostring(redis.call('PTTL', KEYS[3]))}
end
if earliest > now then
  return {'early', tostring(earliest - now)}
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
local m = redis.call('HMGET', KEYS[1], 'created_at', 'request', 'message_id_header', 'sandbox', 'source')
local out = {'claimed', m[1], m[2], m[3], m[4] or '0', m[5] or 'api'}
for _, v in ipairs(pending) do out[#out + 1] = v end
return out
"#,
    )
});

/// Extends a lease that is still ours (or lapsed and not taken by anyone).
///
/// KEYS: lease. ARGV: token, lease ms. Returns 1 when the claim is still held.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

/// Applies outcomes, appends their events, fans them out, releases the lease.
///
/// KEYS: message, recipients, events, lease, jobs.
/// ARGV: ns, domain, token, now ms, retention s, jobs member, attempt placeholder; then per
/// outcome: email, status, next_attempt_at ms or '', response, event id, event type, event body,
/// suppression (a hard bounce's JSON entry for `{ns}:suppressions`, or '').
/// An outcome for a recipient already final is skipped whole (no update, no event). The body's
/// attempt placeholder becomes the recipient's new attempt count.
/// Returns `{remaining, earliest next_attempt_at (0: due now), lease was ours (1/0)}`, or
/// `{-1, 0, 0}` when the message is gone.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local ns, domain, token, now, placeholder = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[7]
local final = { delivered = true, bounced = true, suppressed = true, canceled = true }
local list = load_recipients(KEYS[2])
local i = 8
while i + 7 <= #ARGV do
  local email, status, next_at, response = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local event_id, event_type, body, suppression = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  for _, e in ipairs(list) do
    if e.r.domain == domain and e.r.email == email then
      if not final[e.r.status] then
        local attempts = (e.r.attempts or 0) + 1
        e.r.status = status
        e.r.attempts = attempts
        if next_at == '' then e.r.next_attempt_at = nil else e.r.next_attempt_at = tonumber(next_at) end
        e.r.last_response = response
        e.r.updated_at = now
        redis.call('HSET', KEYS[2], tostring(e.pos), cjson.encode(e.r))
        local at = string.find(body, placeholder, 1, true)
        if at then
          body = string.sub(body, 1, at - 1) .. '"attempt":' .. string.format('%d', attempts)
            .. string.sub(body, at + #placeholder)
        end
        redis.call('RPUSH', KEYS[3], body)
        fanout(ns, event_id, event_type, body, now)
        -- Suppression list: a hard bounce lists the address.
        list_suppression(ns, suppression)
      end
      break
    end
  end
end
local remaining, earliest = 0, nil
for _, e in ipairs(list) do
  if e.r.domain == domain and is_pending(e.r.status) then
    remaining = remaining + 1
    local due = e.r.next_attempt_at or 0
    if earliest == nil or due < earliest then earliest = due end
  end
end
if remaining == 0 then redis.call('SREM', KEYS[5], ARGV[6]) end
local holder = redis.call('GET', KEYS[4])
local ours = 1
if holder == token then
  redis.call('DEL', KEYS[4])
elseif holder then
  ours = 0
end
settle_expiry(KEYS[1], tonumber(ARGV[5]))
return {remaining, earliest or 0, ours}
"#,
    )
});

/// Stores a new hash and indexes it in a sorted set by creation time; refuses a duplicate id.
///
/// KEYS: record, index. ARGV: id, created_at ms, then field/value pairs.
pub(crate) static INSERT_INDEXED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('duplicate id ' .. ARGV[1])
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"#,
    )
});

/// Revokes a key, keeping the first revocation time. KEYS: key. ARGV: now ms.
/// Returns 0 when no such key exists.
pub(crate) static REVOKE_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return 1
"#,
    )
});

/// Removes an endpoint and drops its pending deliveries.
///
/// KEYS: webhook, webhooks index, its pending set, outbox, its delivery log. ARGV: ns, webhook id.
pub(crate) static DELETE_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, did in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('ZREM', KEYS[4], did)
  redis.call('DEL', ARGV[1] .. ':whd:' .. did)
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[5])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"#,
    )
});

/// Leases up to `limit` due webhook deliveries: their outbox score moves to the lease end, so
/// a second dispatcher skips them until then.
///
/// KEYS: outbox. ARGV: ns, now ms, lease end ms, limit, retention s.
/// Returns flat groups of `id, webhook_id, url, secret, event_id, body, attempts`.
pub(crate) static CLAIM_WEBHOOKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, did in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))) do
  local key = ARGV[1] .. ':whd:' .. did
  local d = redis.call('HMGET', key, 'webhook_id', 'event_id', 'body', 'attempts', 'state')
  if not d[1] or d[5] ~= 'pending' then
    redis.call('ZREM', KEYS[1], did)
  else
    local hook = redis.call('HMGET', ARGV[1] .. ':webhook:' .. d[1], 'url', 'secret')
    if not hook[1] then
      -- The endpoint was deleted after the event was queued.
      redis.call('HSET', key, 'state', 'dropped')
      redis.call('EXPIRE', key, ARGV[5])
      redis.call('ZREM', KEYS[1], did)
    else
      redis.call('ZADD', KEYS[1], ARGV[3], did)
      for _, v in ipairs({did, d[1], hook[1], hook[2], d[2], d[3], d[4]}) do out[#out + 1] = v end
    end
  end
end
return out
"#,
    )
});

/// Records one webhook delivery attempt, appends it to the delivery's log (keeping the newest
/// `max logged`), and updates the endpoint's failure streak.
///
/// KEYS: delivery, outbox, endpoint. ARGV: ns, delivery id, state, retry at ms or '', HTTP
/// status or '', error or '', retention s, attempt JSON, max logged, succeeded (`1`/`0`),
/// attempt ms. Returns the endpoint's `failing_since` (ms) or `''`.
pub(crate) static FINISH_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[3]) == 1 then
  if ARGV[10] == '1' then
    redis.call('HDEL', KEYS[3], 'failing_since')
  elseif redis.call('HEXISTS', KEYS[3], 'failing_since') == 0 then
    redis.call('HSET', KEYS[3], 'failing_since', ARGV[11])
  end
end
local since = redis.call('HGET', KEYS[3], 'failing_since') or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return since end
local log = {}
local stored = redis.call('HGET', KEYS[1], 'log')
if stored then log = cjson.decode(stored) end
log[#log + 1] = cjson.decode(ARGV[8])
while #log > tonumber(ARGV[9]) do table.remove(log, 1) end
redis.call('HSET', KEYS[1], 'log', cjson.encode(log))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'last_status', ARGV[5]) else redis.call('HDEL', KEYS[1], 'last_status') end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[6]) else redis.call('HDEL', KEYS[1], 'last_error') end
if ARGV[3] == 'pending' then
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[4]) end
  redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'next_attempt_at'), ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
  local wid = redis.call('HGET', KEYS[1], 'webhook_id')
  redis.call('SREM', ARGV[1] .. ':webhook:' .. wid .. ':pending', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
return since
"#,
    )
});

/// A newest-first page of a list kept as a sorted-set index (score: creation time in ms) plus a
/// hash of JSON values (suppressions, templates). KEYS: index, hash. ARGV: max score (`+inf` or
/// the cursor's ms), the cursor's member or `''`, how many. Members scored exactly the cursor's
/// ms are skipped up to and including the cursor's member (equal scores come in reverse member
/// order), so a page never repeats or skips an entry that shares a millisecond with the cursor.
pub(crate) static PAGE_NEWEST_FIRST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local want, cursor_member = tonumber(ARGV[3]), ARGV[2]
local cursor_ms = tonumber(ARGV[1])
local out, offset = {}, 0
while #out < want do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES', 'LIMIT', offset, 200)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local member, score = page[i], tonumber(page[i + 1])
    if cursor_member == '' or score < cursor_ms or member < cursor_member then
      local v = redis.call('HGET', KEYS[2], member)
      if v then out[#out + 1] = v end
      if #out >= want then break end
    end
  end
  offset = offset + 200
end
return out
"#,
    )
});
