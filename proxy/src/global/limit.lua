-- Floodgate global rate limit: one atomic decision for one key of one limit (or, with 'F' /
-- 'S', the decisions of several requests of that key at once, as if made in turn).
-- KEYS[1]  the key's hash, hash-tagged so every window of it lives in one slot
-- ARGV[1]  'f' fixed window | 's' sliding window | 't' token bucket (GCRA); 'f+' / 's+' when
--          counts to hand over follow the pairs (see below); 'F' / 'S' when the last argument
--          is a count of requests decided at once (see below)
-- ARGV[2..] pairs of (max_requests, window_ms), shortest window first; then, after 'f+' / 's+',
--          one count per window: requests the sidecar admitted locally for this key while
--          Redis was away, added to the current windows before deciding (once per key and
--          outage, so the window it returns in holds every request it admitted in it)
--          'f=' / 's=' (mode: approximate's sync): the pairs, then one count per window that
--          the sidecar admitted since its last sync; they are added, nothing is decided
--          'F' / 'S' (a limit of one window): the pair, then `hits`, how many requests of one
--          key the sidecar decides in this one call (it joins the decisions of one key that
--          arrive together): the answer is theirs, as if each had been decided in turn at the
--          same instant. `allowed` is then how many of them, the first ones, are admitted;
--          `remaining` is what the first one leaves (the k-th leaves k - 1 fewer); and
--          `retry_after_ms` is for the ones not admitted. With `hits` 1 the answer is the
--          plain decision's.
-- Returns "allowed window remaining reset_ms retry_after_ms least" as one string (one RESP
-- value: the client's reply parser costs per value, and this is every request's reply) for the
-- rejecting window, or else the window with the least share left; `least` is the fewest
-- requests any window has left (0 on a rejection), what an approximate sidecar divides; it
-- is left out when the limit has one window (it is `remaining` then).
-- After 'f=' / 's=' the window reported is the one with the fewest left.
-- Time is the server's (TIME), so sidecars with skewed clocks still share one window. Windows are charged shortest first; a window that
-- rejects stops the walk, so longer windows are not charged for a rejected request.
-- Cost: Redis runs this for every request of the fleet (or every turn's requests of one key,
-- joined), and each redis.call and each number turned into text is measurable (callgrind of
-- redis-server, per call: 113k instructions before, 74k, then 71k with the first window's
-- field names as constants; 76k for 5 joined decisions). So the common decision, in a window
-- already started, is TIME, one HMGET and one HINCRBY; the key's expiry (twice the longest
-- window) is renewed only when one of its windows starts, which is often enough: a window's
-- counts are read until the next window ends, and the write that started it set the expiry
-- past that. Rejections write nothing.
local key = KEYS[1]
local kind = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = (#ARGV - 1) / 2
local renew = kind == 't'
local hits = 1
if kind == 'S' or kind == 'F' then
  -- (`tonumber` is a `strtod`: not for the count of one.)
  hits = ARGV[#ARGV]
  if hits == '00001' then hits = 1 else hits = tonumber(hits) end
  n = (#ARGV - 2) / 2
  if kind == 'S' then kind = 's' else kind = 'f' end
  -- With several windows the requests of one call could be turned away by different windows,
  -- each with its own terms: one answer could not say it.
  if n ~= 1 or not hits or hits ~= hits or hits < 1 or hits > 99999 or hits % 1 ~= 0 then
    return redis.error_reply('a count of requests needs a limit of one window and a count of 1 or more')
  end
end
-- Numbers become text through %d, never Lua's or redis.call's float formatting (%.14g,
-- %.17g), which was the largest single cost of a decision in Redis (callgrind). Every value
-- formatted here is integral.
local function int(x) return string.format('%d', x) end
local least = nil
local function done(r)
  if renew then redis.call('PEXPIRE', key, int(2 * tonumber(ARGV[2 * n + 1]))) end
  -- With one window `least` is `remaining`: not sent (formatting a number costs ~4k
  -- instructions of Redis's per decision, callgrind).
  if n == 1 then return string.format('%d %d %d %d %d', r[1], r[2], r[3], r[4], r[5]) end
  return string.format('%d %d %d %d %d %d', r[1], r[2], r[3], r[4], r[5], least or 0)
end
-- A plain decision ('f', 's', 't') skips all of this: one length test.
if #kind > 1 then
  local sync = string.sub(kind, 2, 2) == '='
  kind = string.sub(kind, 1, 1)
  n = (#ARGV - 1) / 3
  -- Window i (of length w) as stored: its field names, the current window's index, the stored
  -- index, and the current and previous counts as of now (rolled over if a window started).
  -- Used by the hand-over and the approximate sync; the decision below inlines it (one Lua call
  -- fewer on every request).
  local function counts(i, w)
    local si = int(i)
    local fw, fc, fp = 'w' .. si, 'c' .. si, 'p' .. si
    local idx = math.floor(now / w)
    local v = redis.call('HMGET', key, fw, fc, fp)
    local wi, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
    if wi ~= idx then
      if wi == idx - 1 then p = c else p = 0 end
      c = 0
    end
    return fw, fc, fp, idx, wi, c, p
  end
  if sync then
    local best = nil
    for i = 1, n do
      local max = tonumber(ARGV[2 * i])
      local w = tonumber(ARGV[2 * i + 1])
      local k = tonumber(ARGV[1 + 2 * n + i])
      local fw, fc, fp, idx, wi, c, p = counts(i, w)
      local into = now - idx * w
      if k > 0 then
        if wi ~= idx then
          redis.call('HSET', key, fw, int(idx), fc, int(c + k), fp, int(p))
          renew = true
        else
          redis.call('HINCRBY', key, fc, int(k))
        end
        c = c + k
      end
      local used = c
      if kind == 's' then used = p * (w - into) / w + c end
      local left = math.floor(max - used)
      if left < 0 then left = 0 end
      if best == nil or left < best[3] then
        local allowed = 0
        if left > 0 then allowed = 1 end
        best = {allowed, i, left, w - into, 0}
      end
    end
    least = best[3]
    return done(best)
  end
  renew = true
  for i = 1, n do
    local k = tonumber(ARGV[1 + 2 * n + i])
    if kind ~= 't' and k > 0 then
      local fw, fc, fp, idx, _, c, p = counts(i, tonumber(ARGV[2 * i + 1]))
      redis.call('HSET', key, fw, int(idx), fc, int(c + k), fp, int(p))
    end
  end
end
local best, best_share = nil, 2
-- Of `hits`: how many were admitted, and when those turned away may come back.
local admitted, rest = 1, 0
for i = 1, n do
  local max = tonumber(ARGV[2 * i])
  local w = tonumber(ARGV[2 * i + 1])
  local res
  if kind == 't' then
    local f = 't' .. int(i)
    local tat = tonumber(redis.call('HGET', key, f)) or now
    if tat < now then tat = now end
    local per = w / max
    local new_tat = tat + per
    if new_tat - now > w then
      least = 0
      return done({0, i, 0, math.ceil(tat - now), math.ceil(new_tat - w - now)})
    end
    redis.call('HSET', key, f, string.format('%.3f', new_tat))
    res = {max, math.floor((w - (new_tat - now)) / per), math.ceil(new_tat - now)}
  else
    -- The first window's names as constants: formatting and joining them cost ~4k.
    local fw, fc, fp = 'w1', 'c1', 'p1'
    if i > 1 then
      local si = int(i)
      fw, fc, fp = 'w' .. si, 'c' .. si, 'p' .. si
    end
    local idx = math.floor(now / w)
    local into = now - idx * w
    local v = redis.call('HMGET', key, fw, fc, fp)
    local wi = tonumber(v[1])
    local c = tonumber(v[2]) or 0
    local p = tonumber(v[3]) or 0
    local started = wi ~= idx
    if started then
      if wi == idx - 1 then p = c else p = 0 end
      c = 0
    end
    -- The previous window weighs what is left of it. One division, rounded once: `1 - into / w`
    -- rounded twice, and put `used` an ulp above a whole number it was exactly, one fewer left.
    local used = c
    if kind == 's' then used = p * (w - into) / w + c end
    local reset = w - into
    -- How many of the `hits` this window admits: each one admitted adds 1 to `used`.
    local a = hits
    if used + a > max then
      a = math.floor(max - used)
      if a < 0 then a = 0 end
      -- The difference was rounded: the test each request would have met in turn decides.
      if a > 0 and used + a > max then a = a - 1 elseif used + a + 1 <= max then a = a + 1 end
      if a > hits then a = hits end
      -- Those turned away find the window holding the a admitted before them.
      local held = c + a
      local retry = reset
      if kind == 's' and held + 1 <= max and p > 0 then
        retry = w * (1 - (max - held - 1) / p) - into
        if retry < 0 then retry = 0 end
        if retry > reset then retry = reset end
      end
      rest = math.ceil(retry)
      if a == 0 then
        least = 0
        return done({0, i, 0, reset, rest})
      end
    end
    local add = '1'
    if a > 1 then add = int(a) end
    if started then
      redis.call('HSET', key, fw, int(idx), fc, add, fp, int(p))
      renew = true
    else
      redis.call('HINCRBY', key, fc, add)
    end
    admitted = a
    -- What the first leaves: the a - 1 after it were admitted, so at least a - 1.
    local left = math.floor(max - used - 1)
    if left < a - 1 then left = a - 1 end
    res = {max, left, reset}
  end
  if least == nil or res[2] < least then least = res[2] end
  local share = res[2] / res[1]
  if share < best_share then
    best_share = share
    best = {admitted, i, res[2], res[3], rest}
  end
end
return done(best)
