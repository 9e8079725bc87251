-- ARGV: prefix, event id. Returns {} or {stream id, body, JSON of what status needs}.
local eid = ARGV[2]
local sid = redis.call('HGET', P .. 'ids', eid)
local e = sid and redis.call('XRANGE', STREAM, sid, sid)[1]
if not e then return {} end
local facts = {now = now_ms(), groups = {}, status = {}, due = {}, last = {}}
local flat = redis.call('HGETALL', P .. 'groups')
for i = 1, #flat, 2 do facts.groups[flat[i]] = flat[i + 1] end
flat = redis.call('HGETALL', P .. 'st:' .. eid)
for i = 1, #flat, 2 do
  facts.status[flat[i]] = flat[i + 1]
  facts.due[flat[i]] = redis.call('ZSCORE', P .. 'due:' .. flat[i], pad(sid)) or false
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', STREAM)) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  facts.last[t['name']] = t['last-delivered-id']
end
return {sid, e[2][10], cjson.encode(facts)}
