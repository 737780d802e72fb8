-- core.email (Coronium's email module): core.email.new() makes a message; its methods set the
-- fields and return the message (so calls chain); msg:send() queues it in the outbox and
-- returns {id, message}, or nil, err, status. The server's transport (SMTP, Mailgun or the
-- development outbox) delivers it: the key, domain and region that Coronium took here are
-- accepted and ignored. EMAIL is the Rust half (src/lua/natives/email.rs).
local EMAIL, kernel = ...
local deliver, wait = kernel.deliver, kernel.wait

local Message = {}
Message.__index = Message

local function append(list, ...)
  for i = 1, select("#", ...) do
    list[#list + 1] = (select(i, ...))
  end
end

function Message:to(...) append(self._fields.to, ...) return self end
function Message:cc(...) append(self._fields.cc, ...) return self end
function Message:bcc(...) append(self._fields.bcc, ...) return self end
function Message:from(address) self._fields.from = address return self end
function Message:replyTo(address) self._fields.replyTo = address return self end
function Message:subject(text) self._fields.subject = text return self end
function Message:text(text) self._fields.text = text return self end
function Message:html(html) self._fields.html = html return self end
function Message:tag(tag) self._fields.tag = tag return self end
-- Mailgun delivery switches; the server's transport decides these (TLS is always verified).
function Message:requireTls() return self end
function Message:skipVerification() return self end
function Message:testMode() return self end

function Message:send(listener)
  EMAIL.send(self._fields, kernel.project(), kernel.client())
  return deliver(listener, wait())
end

-- Every project's messages share these methods: nobody may change them or reach them.
Message.__metatable = false
kernel.freeze(Message)

local email = {}

function email.new()
  return setmetatable({ _fields = { to = {}, cc = {}, bcc = {} } }, Message)
end

return email
