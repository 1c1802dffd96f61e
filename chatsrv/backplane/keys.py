"""Everything chatsrv keeps in Redis and says on its channels: key names, Lua, messages.

Keys (all under the `chatsrv:` prefix; one Redis database per cluster):

    chatsrv:users              hash  user key -> {"node", "name", "since", "peer"} (JSON)
    chatsrv:groups             hash  group key -> {"name", "by", "at", "owner"} (JSON)
    chatsrv:roles:<group>      hash  the group's roles, one field per fact: `join`,
                                     `post`, `history`, `visibility` -> value;
                                     `mod:<user>`, `inv:<user>`, `ban:<user>` -> name;
                                     `mute:<user>` -> end (Unix time) or `inf`;
                                     `v` -> version (+1 per change)
    chatsrv:history:<group>    list  the group's last --history messages, [at, sender, text]
    chatsrv:nodes              set   node ids believed alive
    chatsrv:node:<id>          string, with a TTL: the node's heartbeat
    chatsrv:node:<id>:users    set   user keys the node holds (freed when it is reaped)
    chatsrv:accounts           hash  account key -> {"name", "phc", "at", "gen", "suspended"}
                                     (JSON; `phc` is the argon2id hash, never a password)
    chatsrv:account-logins     hash  account key -> last login (Unix time)
    chatsrv:token-key          string  the HMAC key of login tokens (not a token)

Channels:

    chatsrv:ctl                every node: logins, logouts, joins, leaves, new and
                               deleted groups, node state, announcements (JSON)
    chatsrv:g:<group>          nodes with local members of the group: public messages,
                               `<node>\\0<count>\\0<count encoded delivery lines>`
                               (the group's messages of one publisher turn)
    chatsrv:n:<id>             one node: private messages `p<user key>\\0<line>` and
                               control (JSON: kick)

Control messages are JSON objects with readable keys; `type` says which, `node`
is the sender's id (group keys and user keys are `protocol.name_key`s):

    login     node, name, since, peer, group (General's key), token (the claim's)
    logout    node, user
    join      node, user, group          leave     node, user, group
    group     name, by, at, owner        delgroup  node, group
    roles     node, group, field, value (null: removed), actor, target, notice,
              reason, token, v (a role change, written by ROLES: every node applies it)
    removed   node, user, name, group, actor, was (the node removed its member)
    state     node, users ([name, since, peer, [group keys]] each)
    hello     node                       gone      node
    announce  node, text, group (a group name, or null: everyone)
    account   node, key (an account was created, changed or deleted: read it again)
    loginfail node, key, at (a failed login to that account, for the throttle)
    kick      name, reason (kicked | replaced; on the target node's channel)
    remove    node, group, user, actor, reason (a moderator's kick of the target
              node's member; on that node's channel)

Nodes of different versions must not share a Redis (docs/scaling.md: upgrade
by restarting every node). No password or token is ever written to Redis.

Everything a node publishes goes through one connection in order, and every
node reads all its subscriptions on one connection, so Redis's single order of
execution is the order every node sees: a sender's join notice, its public
messages and its leave notice arrive everywhere in the order it made them.
"""

from __future__ import annotations

import json

PREFIX = "chatsrv:"
USERS = PREFIX + "users"
GROUPS = PREFIX + "groups"
NODES = PREFIX + "nodes"
CTL = PREFIX + "ctl"
ACCOUNTS = PREFIX + "accounts"
ACCOUNT_LOGINS = PREFIX + "account-logins"
TOKEN_KEY = PREFIX + "token-key"
AUDIT = PREFIX + "audit"  # the audit log, newest first (a list capped at audit.REDIS_CAP)


def history(group_key: str) -> str:
    return f"{PREFIX}history:{group_key}"


def roles(group_key: str) -> str:
    return f"{PREFIX}roles:{group_key}"


def heartbeat(node: str) -> str:
    return f"{PREFIX}node:{node}"


def node_users(node: str) -> str:
    return f"{PREFIX}node:{node}:users"


def group_channel(group_key: str) -> str:
    return f"{PREFIX}g:{group_key}"


def node_channel(node: str) -> str:
    return f"{PREFIX}n:{node}"


GROUP_CHANNEL_PREFIX = group_channel("").encode()
NODE_CHANNEL_PREFIX = node_channel("").encode()


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# Claim a username for this node if it is free; with ARGV[6] = '1' (re-registering
# this node's own users) also if this node already holds it. Announces the
# login on the control channel in the same atomic step.
# KEYS: users, node users.
# ARGV: user key, record, node, ctl channel, message ('' = none), own ('1' or '0').
CLAIM = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and (ARGV[6] ~= '1' or cjson.decode(v)['node'] ~= ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""

# Free a username if this node holds it, and announce the logout.
# KEYS: users, node users. ARGV: user key, node, ctl channel, message.
RELEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and cjson.decode(v)['node'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

# Reap a node whose heartbeat expired: exactly one surviving node wins (SREM),
# frees the names the dead node held and tells every node, atomically.
# KEYS: dead heartbeat, nodes, dead node users, users. ARGV: dead id, ctl, message.
REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return -1 end
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local v = redis.call('HGET', KEYS[4], k)
  if v and cjson.decode(v)['node'] == ARGV[1] then
    redis.call('HDEL', KEYS[4], k)
    n = n + 1
  end
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

# Delete a group, its history and its roles, and tell every node (they drop it and
# tell their members). Run by the publisher, after every message this node queued
# before. KEYS: groups, history, roles. ARGV: group key, ctl channel, message.
# Returns 1 if it existed.
DELETE_GROUP = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

# Create a group unless any node has it; announce it. Returns the existing record
# (JSON) when taken, '' when created.
# KEYS: groups. ARGV: group key, record, ctl channel, message.
CREATE_GROUP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return ''
"""

# One change of a group's roles: set (or remove) one field of its hash, count the
# version up and announce the change with that version, atomically, so every node
# applies the changes in the order Redis made them. One field per fact: changes
# of two nodes to different facts of one group never overwrite each other.
# Returns the version, or 0 if the group no longer exists (nothing written).
# KEYS: groups, roles. ARGV: group key, field, value, remove ('1' or '0'), ctl
# channel, message head, message tail (the version goes between).
ROLES = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
local v = redis.call('HINCRBY', KEYS[2], 'v', 1)
redis.call('PUBLISH', ARGV[5], ARGV[6] .. v .. ARGV[7])
return v
"""
