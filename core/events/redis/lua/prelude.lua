-- Prepended to every script, after the constants the store declares from Python (the
-- delivery states DELIVERED, ACKED, RETRYING and DEAD, the end reasons TIMED_OUT and
-- DISCONNECTED with their messages TIMED_OUT_MESSAGE and DISCONNECTED_MESSAGE, MAX_ERRORS
-- and SCAN).
-- Every script takes the key prefix as ARGV[1].
local P = ARGV[1]
local STREAM = P .. 'stream'

local function pad(sid)  -- "12-3" -> fixed width, so byte order is position order
  local ms, seq = string.match(sid, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end

local function unpad(p)
  local ms, seq = string.match(p, '^(%d+)-(%d+)')
  return (string.gsub(ms, '^0+(%d)', '%1')) .. '-' .. (string.gsub(seq, '^0+(%d)', '%1'))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function xinfo()  -- the stream's scalars; nil if there is no stream
  if redis.call('EXISTS', STREAM) == 0 then return nil end
  local raw, t = redis.call('XINFO', 'STREAM', STREAM), {}
  for i = 1, #raw, 2 do t[raw[i]] = raw[i + 1] end
  return t
end

-- fields of an entry, in the order append writes them: i, y (type), s (subject), t, b
local function wanted(sel, f)
  if sel.subject ~= '' and f[6] ~= sel.subject then return false end
  if #sel.types == 0 then return true end
  for _, t in ipairs(sel.types) do
    if string.sub(t, -2) == '.*' then
      local prefix = string.sub(t, 1, -2)
      if string.sub(f[4], 1, #prefix) == prefix then return true end
    elseif f[4] == t then
      return true
    end
  end
  return false
end

local function get_status(eid, group)
  local raw = redis.call('HGET', P .. 'st:' .. eid, group)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put_status(eid, group, st)
  redis.call('HSET', P .. 'st:' .. eid, group, cjson.encode(st))
end

-- An attempt that ended without an ack: message, time (ms), attempt, why (an EndReason),
-- the member that held it, and the error's type and stack when the consumer sent them.
local function add_error(st, message, now, reason, etype, stack)
  if type(st.e) ~= 'table' then st.e = {} end
  table.insert(st.e, {m = message, t = now, a = st.a, r = reason, c = st.c,
                      y = etype or '', k = stack or ''})
  while #st.e > MAX_ERRORS do table.remove(st.e, 1) end
end
