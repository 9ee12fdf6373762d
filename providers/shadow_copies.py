"""Shadow copies made by the front proxy itself: the Lua action HAProxy runs, and where it is written.

A request its endpoint's policy chose to shadow reaches this action carrying ``x-servectl-shadow`` (one value
per shadow backend), already rewritten onto its primary's internal route and proved. When HAProxy holds the
whole request — a method its HTTP client sends, a body that fit the buffer (``wait-for-body``), not a WebSocket —
the action hands one copy per shadow to a task of HAProxy's own (its HTTP client, through the front proxy's
copies listener, a unix socket in the runtime dir) and marks the request ``x-servectl-mirrored`` instead: the
primary only counts the copies (``servectl_shadow_sent``). Anything else goes on as it came, and its primary
sends the copies through Serve's handles (the fallback, as on every handle call).

Why: a copy through a Serve handle costs the primary's replica several milliseconds of CPU (measured: ~6 ms
per call on the 2-core machine, against ~0.6 ms for an HTTP request on the fast path), and a slow shadow's
pending copies sat in the primary's event loop. Ray Serve 1.x's shadows were copies its proxy sent; this is
the same, in the proxy servectl runs.
"""
from __future__ import annotations

import os

from servectl.runtime.headers import BACKEND_HEADER, MIRRORED_HEADER, ROLE_HEADER, SHADOW_HEADER

SCRIPT_FILE = "mirror.lua"
COPIES_SOCKET = "copies.sock"  # relative to HAProxy's working directory, the runtime dir (a socket path is short)
COPIES_PREFIX = "cp_"  # the backend section a shadow's copies go through: cp_<backend>
MAX_IN_FLIGHT = 1_000  # copies one HAProxy worker has under way; past it the primary sends them
COPY_TIMEOUT_MS = 130_000  # a copy's whole exchange; a backend's request_timeout_s ends it sooner (504)
ACTION = "servectl_mirror"

SCRIPT = f"""\
-- servectl's front proxy: shadow copies sent by HAProxy (written by servectl.providers.shadow_copies).
local SHADOW, MIRRORED = "{SHADOW_HEADER}", "{MIRRORED_HEADER}"
local ROLE, BACKEND = "{ROLE_HEADER}", "{BACKEND_HEADER}"
local SENDERS = {{GET = "get", HEAD = "head", PUT = "put", POST = "post", DELETE = "delete"}}
-- What a copy does not carry over: framing (the client sets its own), hop-by-hop fields, servectl's marks.
local DROPPED = {{["content-length"] = true, ["transfer-encoding"] = true, connection = true, ["keep-alive"] = true,
                 upgrade = true, te = true, trailer = true, expect = true, [SHADOW] = true, [MIRRORED] = true,
                 [ROLE] = true, [BACKEND] = true}}
local MAX_IN_FLIGHT = {MAX_IN_FLIGHT}
local in_flight = 0

local function send(copy)
  pcall(function()
    local client = core.httpclient()
    client[copy.sender](client, {{url = copy.url, headers = copy.headers, body = copy.body,
                                 dst = "unix@{COPIES_SOCKET}", timeout = {COPY_TIMEOUT_MS}}})
  end)
  in_flight = in_flight - 1
end

core.register_action("{ACTION}", {{"http-req"}}, function(txn, prefix)  -- prefix: the internal routes'
  local headers = txn.http:req_get_headers()
  local shadows = {{}}
  for _, value in pairs(headers[SHADOW] or {{}}) do
    for name in string.gmatch(value, "[^,%s]+") do shadows[#shadows + 1] = name end
  end
  local sender = SENDERS[txn.sf:method()]
  local body = txn.sf:req_body() or ""
  local declared = headers["content-length"] and tonumber(headers["content-length"][0])
  local whole = headers["transfer-encoding"] == nil and (declared or 0) == #body
  local primary = txn:get_var("txn.sc_b")
  local path = txn.sf:pathq()
  if #shadows == 0 or sender == nil or not whole or headers["upgrade"] ~= nil or primary == nil
      or string.sub(path, 1, #prefix + #primary) ~= prefix .. primary
      or in_flight + #shadows > MAX_IN_FLIGHT then
    return  -- the primary sends the copies
  end
  local tail = string.sub(path, #prefix + #primary + 1)
  local kept = {{}}  -- the request's fields as the HTTP client takes them (lists from 1), read once
  for field, values in pairs(headers) do
    if not DROPPED[field] then
      local list = {{}}
      for i = 0, #values do list[#list + 1] = values[i] end
      kept[field] = list
    end
  end
  for _, name in ipairs(shadows) do
    local copied = {{}}  -- a table per copy (its task reads it later); the value lists are shared, never changed
    for field, list in pairs(kept) do copied[field] = list end
    copied[ROLE] = {{"shadow"}}
    copied[BACKEND] = {{name}}
    in_flight = in_flight + 1
    core.register_task(send, {{sender = sender, url = "http://servectl" .. prefix .. name .. tail,
                              headers = copied, body = body}})
  end
  txn.http:req_del_header(SHADOW)
  txn.http:req_set_header(MIRRORED, table.concat(shadows, ","))
end, 1)
"""


def write_script(runtime_dir: str) -> str:
    """Write the Lua action into ``runtime_dir`` (0600, replaced only when it changed) and return its path."""
    path = os.path.join(runtime_dir, SCRIPT_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == SCRIPT:
                return path
    except OSError:
        pass
    tmp = path + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        handle.write(SCRIPT)
    os.replace(tmp, path)
    return path
