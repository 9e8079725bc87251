-- ARGV: prefix, group, selector JSON, start. Returns the group's selector JSON.
local existing = redis.call('HGET', P .. 'groups', ARGV[2])
if not existing then
  redis.call('HSET', P .. 'groups', ARGV[2], ARGV[3])
  existing = ARGV[3]
end
redis.pcall('XGROUP', 'CREATE', STREAM, ARGV[2], ARGV[4], 'MKSTREAM')
return existing
