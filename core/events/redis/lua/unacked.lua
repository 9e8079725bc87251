-- ARGV: prefix, group, consumer. Returns how many entries the consumer holds.
local r = redis.pcall('XPENDING', STREAM, ARGV[2])
if r.err or not r[4] then return 0 end
for _, c in ipairs(r[4]) do
  if c[1] == ARGV[3] then return tonumber(c[2]) end
end
return 0
