-- ARGV: prefix, after ("" = from the first), limit, check expiry (0/1), selector JSON,
-- start_us, end_us ("" = unbounded). Returns {'ok', covered, at_head, stream id, body,
-- ...}; `covered` is the last entry looked at. With the check: 'lost' when the sentinel
-- is gone (Redis lost its data and nobody noticed yet: the store recovers, then asks
-- again), and {'expired'|'gone', resume after, oldest id or ''} when the events after
-- `after` are no longer stored: 'gone' when `after` is older than a loss of the data.
local after, limit, check = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local sel = cjson.decode(ARGV[5])
local t0, t1 = tonumber(ARGV[6]), tonumber(ARGV[7])
if check and redis.call('EXISTS', P .. 'alive') == 0 then return 'lost' end
local info = xinfo()
if not info then return {'ok', after, 1} end
local head = info['last-generated-id']
if head == '0-0' then head = '' end
local maxdel = info['max-deleted-entry-id']
if check and after ~= '' then
  local lost = redis.call('GET', P .. 'lost')
  local gone = lost and pad(after) < pad(lost)
  if gone or (maxdel ~= '0-0' and pad(after) < pad(maxdel)) then
    local resume = (lost and pad(maxdel) < pad(lost)) and lost or maxdel
    local first = redis.call('XRANGE', STREAM, '-', '+', 'COUNT', 1)[1]
    return {gone and 'gone' or 'expired', resume, first and first[1] or ''}
  end
end
local out, found, scanned, covered, at_end = {'ok', '', 0}, 0, 0, after, false
local cursor = after == '' and '-' or '(' .. after
while found < limit do
  local want = math.min(256, SCAN - scanned)
  if want <= 0 then break end
  local entries = redis.call('XRANGE', STREAM, cursor, '+', 'COUNT', want)
  for _, e in ipairs(entries) do
    scanned, covered = scanned + 1, e[1]
    local f = e[2]
    local t = tonumber(f[8])
    if wanted(sel, f) and (not t0 or t >= t0) and (not t1 or t < t1) then
      out[#out + 1] = e[1]
      out[#out + 1] = f[10]
      found = found + 1
      if found >= limit then break end
    end
  end
  if #entries < want and found < limit then at_end = true break end
  cursor = '(' .. covered
end
if at_end and head ~= '' and (covered == '' or pad(covered) < pad(head)) then covered = head end
out[2] = covered
out[3] = (head == '' or (covered ~= '' and pad(covered) >= pad(head))) and 1 or 0
return out
