-- lib_protocol.lua: the protocol's names for Lua, prepended to every script by
-- state/conn.py lua(). The twin of onestock/domain/protocol.py (codes, separators) and of
-- the internal field prefixes of state/keys.py; tests/test_protocol.py checks that every
-- name here has the same value there. One definition per line: NAME = 'value'.

-- separators
local SEP = '\031'
local RS = '\030'
local GS = '\029'
local BUCKET = '\028'

-- outcome and registry codes (protocol.Code)
local ACCEPTED = 'A'
local REJECTED = 'R'
local CANCELLED = 'C'
local CANDIDATE = 'G'
local HELD = 'H'
local BUCKET_SHORT = 'B'
local STALE = 'S'
local UNDECIDED = 'U'
local CAMPAIGN_REJECTED = 'r'
local EARLY_CANCEL = 'P'
local RETURN = 'T'
local CANCELLATION = 'X'
local DEAD = 'D'
local MOVEMENT = 'M'
local RESERVED = 'V'
local EXPIRED = 'E'
local PAID = 'Y'

-- a stock movement's state in a slot (protocol.MOVE_*)
local MOVE_HELD = 'h'
local MOVE_APPLIED = 'a'
local MOVE_REFUSED = 'x'

-- fields of a SKU's stock hash beside its locations (keys.py)
local STOCK_MARKER = '\0sku'
local RULE_LIMIT = '\0limit'
local RULE_VIP_UNTIL = '\0vip'
local RULE_LOW = '\0low'
local RULES_VERSION = '\0v'
local ALERTED = '\0alerted'
local STOCK_UP = '\0up'
local LOCK_QTY = '\0Lq:'
local LOCK_UNTIL = '\0Lu:'
local LOCK_USED = '\0Lc:'
local CAMPAIGN = '\0G:'
local CAMPAIGN_LATENESS = '\0Gl:'

-- internal fields of a shard's registry and of a SKU's decision hash (keys.py)
local REG_EARLY_CANCEL = '\0c:'
local REG_CANCEL = '\0x:'
local REG_CANCELLING = '\0k:'
local REG_RETURN = '\0R:'
local REG_NO_EARLY = '\0nc'
local REG_DEAD = '\0#'
local REG_MOVEMENT = '\0M:'
local REG_STATE = '\0s:'
local REG_EVENT = '\0e:'
local REG_PENDING = '\0p:'
local REG_SHIPMENT = '\0f:'
local REG_CLAIM = '\0C:'
local REG_WRITE_OFF = '\0W:'
local DEC_REROUTE = '\0rr:'
local DEC_UNDONE = '\0u:'
local DEC_RETURN = '\0r:'
local DEC_RETURNED = '\0rq:'
local DEC_RULED = '\0d:'
local DEC_MOVEMENT = '\0m:'

-- a winner's gift instead of a location (keys.py)
local GIFT_NONE = '\0-'
local GIFT_BACK = '\0b:'
local GIFT_CANCELLED = '\0x'
