"""The key layout. Every key a script touches together shares one ``{hash tag}``.

- ``{s<N>}``: one input shard N: its input stream, its output streams, its registry of
  emitted order ids and its trim watermark, so ``emit.lua`` is one slot.
- ``{k:<sku>}``: one SKU: its stock per location, its decision records and its parts of
  orders that span slots, so ``decide.lua`` touches only SKUs of one slot.
"""

from __future__ import annotations

from redis.crc import key_slot

from onestock.domain.protocol import BUCKET

PREFIX = "os"
CATALOG = f"{PREFIX}:catalog"  # JSON of the loaded catalog
CATALOG_VERSION = f"{PREFIX}:catalog:version"  # INCR on every load; workers re-read on change
SHARDS = f"{PREFIX}:shards"  # K, fixed once the first event is pushed
# The intake processes' outcome counts (onestock.ops.metrics): "r:<source>:<outcome>" requests,
# "e:<source>" events stored; each process adds what it counted every second.
INTAKE_COUNTS = f"{PREFIX}:intake:counts"
INTAKE_REQUESTS, INTAKE_EVENTS = "r", "e"  # the kinds of its fields: "<kind>:<...>"
# How the dataset's deciding spans SKUs, fixed by its first process (``Store.layout``):
# LAYOUT_ONE, a single server deciding any order in one script call; LAYOUT_SLOTS, a basket
# whose SKUs hash to different slots reserved slot by slot (a Redis Cluster's, and the layout
# of a single-server dataset from before this key; a replay must never cross layouts: a
# decision's state lives where its layout keeps it)
LAYOUT = f"{PREFIX}:layout"
LAYOUT_ONE, LAYOUT_SLOTS = "one", "slots"
INSTANCE = f"{PREFIX}:instance"  # the dataset's random id, fixed by its first run (recovery)
# `onestock loadtest`'s own bookkeeping (loadtest/checks.py): the order ids the intake
# acknowledged (SET), and the acknowledged events that can only be dead letters (count).
LOADTEST_ACKED = f"{PREFIX}:loadtest:acked"
LOADTEST_ACKED_DEAD = f"{PREFIX}:loadtest:acked_dead"
STOCK_MARKER = "\x00sku"  # field present in every stock hash: the SKU exists even at 0 units
# The SKU's rules live beside its stock (fields that start with NUL are never locations), so
# one HGETALL gives a script everything it needs about the SKU.
RULE_LIMIT = "\x00limit"  # per_customer_limit, units
RULE_VIP_UNTIL = "\x00vip"  # vip_presale_until, epoch milliseconds
RULE_LOW = "\x00low"  # low_stock_threshold, units
# The catalog version that last wrote the SKU's rules: a script asked by a decider whose
# catalog is older answers "stale" and changes nothing (an order is judged by one catalog).
RULES_VERSION = "\x00v"
ALERTED = "\x00alerted"  # flag: the low-stock alert fired (cleared when a restock lifts it)
# How many times the stock hash's units changed: only grows (lib_stock.lua add_units); a
# reader of a hot SKU's buckets compares it before and after (state/buckets.py snapshot)
STOCK_UP = "\x00up"
# A channel lock of the SKU: its units, its end (epoch ms), and the units its channel drew
# from it so far (kept across catalog reloads while the SKU keeps a lock for that channel).
LOCK_QTY, LOCK_UNTIL, LOCK_USED = "\x00Lq:", "\x00Lu:", "\x00Lc:"
# A first-N gift campaign on the SKU: its first_n and its lateness_ms.
CAMPAIGN, CAMPAIGN_LATENESS = "\x00G:", "\x00Gl:"

# Internal fields of a shard's registry (``emitted``) and of a SKU's decision hash
# (``decisions``) start with NUL, like the rules beside a SKU's stock: an order id passes
# ``onestock.domain.events.text_problem`` (printable), so it never does, and no order id can name,
# shadow or overwrite internal state. Any order id the contract allows is an order id.
REG_EARLY_CANCEL = "\x00c:"  # + order id: a cancel that came before its order (registry only)
REG_CANCEL = "\x00x:"  # + order id: the record that cancels an accepted order
REG_CANCELLING = "\x00k:"  # + order id: a cancel is giving the order's units back
REG_RETURN = "\x00R:"  # + return digest: an accepted return's record
REG_NO_EARLY = "\x00nc"  # flag: no cancel of the shard waits for its order (emit.lua)
# + input entry id: that entry's dead letter is written (emit.lua): a replay of the entry
# is skipped, never judged again (dataflows.aftersale returns, dataflows.payments.fresh)
REG_DEAD = "\x00#"
REG_MOVEMENT = "\x00M:"  # + movement id: its record is written (one per movement id)
# + order id: the version of the order's latest record when it is past 1 (a payment, an
# expiry): emit.lua writes it with the record, and the order's own field then holds its
# current outcome (dataflows/payments.py)
REG_STATE = "\x00s:"
# + order id SEP location: what the location said of its shipment of the order ("shipped",
# "picked_up", "rejected"; dataflows/fulfilment.py)
REG_SHIPMENT = "\x00f:"
REG_CLAIM = "\x00C:"  # + order id SEP location: the location claimed its shipment (will serve it)
# + order id SEP location: the record of the units a rejecting location wrote off (to the
# movements stream, like a movement's record)
REG_WRITE_OFF = "\x00W:"
# + order id SEP version: a re-route's outcome in a slot (reroute.lua, in the decision hash
# of the slot's first SKU)
DEC_REROUTE = "\x00rr:"
# + input entry id: that payment or fulfilment event was applied (or changed nothing): a
# replay of the entry is skipped, never judged again against what later events did
REG_EVENT = "\x00e:"
REG_PENDING = "\x00p:"  # + order id: a reserved order's channel SEP delivery mode (payments.lua)
DEC_UNDONE = "\x00u:"  # + order id: a cancel gave the order's units of the SKU back
DEC_RETURN = "\x00r:"  # + return digest: that return was applied to the SKU
DEC_RETURNED = "\x00rq:"  # + order id: units of the SKU returned for the order so far
# + order id: what an accepted order's decision took of the SKU's rules (decide.lua):
# "<customer> SEP <channel> SEP <units counted against the customer's limit> SEP <units drawn
# from the channel's own lock>", kept where either is above 0, so a rejection after the
# decision (a location's day full: dataflows/fulfilment.py) gives them back (undo_units.lua)
DEC_RULED = "\x00d:"
# + movement id: the movement's state in this slot (protocol.MOVE_*; kept in the decision
# hash of the first SKU of the slot's movement.lua call)
DEC_MOVEMENT = "\x00m:"
# What a winner's gift is instead of a location (gift.lua, gift_return.lua, settled_ack.lua):
# NUL-prefixed too, so a location id never reads as one.
GIFT_NONE = "\x00-"  # no unit was left: the campaign ends at this rank
GIFT_BACK = "\x00b:"  # + location: the unit taken there went back (the order was cancelled)
GIFT_CANCELLED = "\x00x"  # the order was cancelled after its rank was settled
# Each input shard's event-time progress, as its worker last reported it (first-N
# watermarks, dataflows/gifts.py): HASH shard -> "<greatest paid_at ms read, or ''>
# <0: reading, 1: nothing left to read, 2: this run reads no more> <the worker's wall ms>"
# (space separated).
PROGRESS = f"{PREFIX}:progress"


def lock_qty(channel: str) -> str:
    return LOCK_QTY + channel


def lock_until(channel: str) -> str:
    return LOCK_UNTIL + channel


def shard_tag(shard: int) -> str:
    return f"{PREFIX}:{{s{shard}}}"


def inbox(shard: int) -> str:
    return f"{shard_tag(shard)}:in"


def outbox(shard: int) -> str:
    return f"{shard_tag(shard)}:out"


def deadbox(shard: int) -> str:
    return f"{shard_tag(shard)}:dl"


# Idempotency state lives in generations (state/gens.py): a generation is one window of the
# stream clock (events.WINDOW_MS) and its keys end ":<generation number>". A script reads an
# order's state in the generation of its batch and the one before, and writes in its batch's;
# a generation is deleted once every shard has read past the next one.


def emitted(shard: int, gen: int) -> str:
    """The shard's registry (order id -> outcome, and the NUL-prefixed marks) of ``gen``."""
    return f"{shard_tag(shard)}:done:{gen}"


def decide_mark(shard: int) -> str:
    """The greatest input entry id of the shard any batch was ever sent on to decide with:
    an entry after it was never decided (nothing of it is stored anywhere). Set before a
    batch's first decision is written."""
    return f"{shard_tag(shard)}:dmark"


def journal(shard: int) -> str:
    """On a single server, the outcomes of the shard's fresh decide.lua calls (those of a
    batch wholly after its decide mark) since its last fresh batch began: per call, keyed by
    its first order id, the MessagePack list [order id, outcome, ...]. It stands in for the
    per-order entries of the decision hashes (one write per call, not per order): a replay
    of the batch after a crash reads it; the next fresh batch deletes it (with its first
    read, or right after it in a process's first batch of the shard: dataflows/decider.py,
    Decider._prelude; decide.lua)."""
    return f"{shard_tag(shard)}:journal"


def quarantined(shard: int) -> str:
    """The generation (state/gens.py) of the shard's last quarantined event: an order decided
    before its batch raised has no record, and a later copy must find its stored decision;
    until that generation is past, no batch of the shard counts as fresh (dataflows/decider.py).
    """
    return f"{shard_tag(shard)}:quarantined"


def counters(shard: int) -> str:
    return f"{shard_tag(shard)}:counts"


def watermark(shard: int) -> str:
    return f"{shard_tag(shard)}:wm"


def delivery(shard: int, source: str, delivery_id: str) -> str:
    """A webhook delivery id already stored (dedup; in the slot of the shard it went to)."""
    return f"{shard_tag(shard)}:hook:{source}:{delivery_id}"


def sku_tag(sku: str) -> str:
    return f"{PREFIX}:{{k:{sku}}}"


def stock(sku: str) -> str:
    return f"{sku_tag(sku)}:stock"


def decisions(sku: str, gen: int) -> str:
    """The SKU's decision hash (order id -> outcome, and NUL-prefixed marks) of ``gen``."""
    return f"{sku_tag(sku)}:dec:{gen}"


def bought(sku: str, gen: int) -> str:
    """Units of this SKU each customer was sold in ``gen`` (per-customer limits count the
    units of the generation and the one before)."""
    return f"{sku_tag(sku)}:bought:{gen}"


# The generation families (state/gens.py sweeps them): the suffix after a key's hash tag.
GEN_FAMILIES = (":done:", ":dec:", ":bought:", ":parts:")
GEN_SWEPT = f"{PREFIX}:gen:swept"  # the newest generation deleted (state/gens.py)
# HASH: 'gen' the newest generation swept, and per shard its newest output entry id read
# after that sweep (sweep_mark.lua): what a shard's fold must reach before settling
GEN_SWEPT_OUTBOX = f"{PREFIX}:gen:swept-outbox"


# Trimming the output streams (state/ledger.py): the audit's fold of a shard's records.


# HASH shard -> the newest output entry id written to a file by `onestock fulfilments --out
# PATH --mark-exported`: where no consumer group or record subscriber reads the records, those
# up to it may be trimmed (state/outbox.py)
RECORDS_EXPORTED = f"{PREFIX}:records:exported"
LEDGER_LEASE = f"{PREFIX}:ledger:lease"  # the process that folds and trims (holder, PX)
LEDGER_WINDOW = f"{PREFIX}:ledger:window"  # the window (ms) kept generations are numbered by


def tally(shard: int) -> str:
    """HASH of the shard's fold: ``mark`` (the last output entry folded), records and
    duplicates counted, first and last decision ms, ``lo``/``hi`` (the oldest and newest
    generation of kept orders) and ``settled`` (the newest one settled into
    ``settled_totals``)."""
    return f"{shard_tag(shard)}:tally"


def settled_totals(shard: int) -> str:
    """HASH of the shard's settled orders' totals (onestock/domain/tally.py ``Totals``)."""
    return f"{shard_tag(shard)}:settled"


def kept(shard: int, gen: int) -> str:
    """HASH order id -> its folded versions (``OrderFold``) of the orders whose latest
    record was written in ``gen``; settled, then deleted, once no version can come."""
    return f"{shard_tag(shard)}:kept:{gen}"


def alerts(sku: str) -> str:
    """Low-stock and sold-out alerts of this SKU (a stream in its slot)."""
    return f"{sku_tag(sku)}:alerts"


def parts(sku: str, gen: int) -> str:
    """What this slot reserved for orders across slots (order id -> parts) in ``gen``."""
    return f"{sku_tag(sku)}:parts:{gen}"


# First-N gift campaigns live in their campaign SKU's slot (the definition beside its stock:
# '\0G:<campaign>' = first_n, '\0Gl:<campaign>' = lateness_ms).
def candidates(sku: str) -> str:
    """ZSET of accepted, not yet settled orders of the SKU's campaigns: member
    "<campaign>\x1f<order id>" (suffix "\x1fL" when late), score paid_at ms."""
    return f"{sku_tag(sku)}:cand"


def campaigns(sku: str) -> str:
    """HASH of the SKU's campaigns' progress: "<campaign>:arrived" (wall ms of the last
    candidate), ":ranks" (ranks given), ":upto" (the watermark ranks were settled up to, ms),
    ":ended" (rank at which the gift stock ran out)."""
    return f"{sku_tag(sku)}:camp"


def candidacies(sku: str) -> str:
    """SET of the orders across slots that became candidates of the SKU's campaigns (one
    candidacy per order, however often a crashed attempt is replayed)."""
    return f"{sku_tag(sku)}:ever"


def settled(sku: str) -> str:
    """LIST of settled ranks whose records are not yet released: "<campaign>\x1f<order
    id>\x1f<rank>\x1f<late 0/1>"."""
    return f"{sku_tag(sku)}:settled"


def lease(sku: str) -> str:
    """Who settles the SKU's campaigns right now (one worker at a time)."""
    return f"{sku_tag(sku)}:lease"


def ranks(sku: str) -> str:
    """STREAM of every settled rank of the SKU's campaigns, in rank order (onestock gifts)."""
    return f"{sku_tag(sku)}:ranks"


def gift_taken(sku: str) -> str:
    """HASH "<campaign>\x1f<order id>" -> location a gift unit of this SKU was taken from
    ("-": none left)."""
    return f"{sku_tag(sku)}:gifted"


def held(shard: int) -> str:
    """HASH order id -> record held until its gift is settled."""
    return f"{shard_tag(shard)}:held"


def returns(shard: int) -> str:
    """STREAM of accepted returns (units restocked), one entry per batch."""
    return f"{shard_tag(shard)}:returns"


def movements(shard: int) -> str:
    """STREAM of movement records (onestock movements), one entry per batch."""
    return f"{shard_tag(shard)}:moves"


def deadlines(shard: int) -> str:
    """ZSET of the shard's reserved orders: order id, scored by its payment deadline (epoch
    ms); an order leaves once it is paid, expired or cancelled (payments.lua)."""
    return f"{shard_tag(shard)}:deadlines"


def claims(shard: int) -> str:
    """ZSET of the shard's shipments waiting to be claimed at a location with a claim
    timeout: "<order id> SEP <location>" scored by its deadline (epoch ms)."""
    return f"{shard_tag(shard)}:claims"


def decided(shard: int) -> str:
    """STREAM of the immediate accept/reject of orders that wait for a gift settlement."""
    return f"{shard_tag(shard)}:decided"


# The availability change feed (state/feed.py, docs/availability.md): every key in one slot.
FEED_TAG = f"{PREFIX}:{{feed}}"
FEED = f"{FEED_TAG}:transitions"  # STREAM, entry id "<seq>-0": one transition each
FEED_SEQ = f"{FEED_TAG}:seq"  # the last transition's seq
FEED_STATUS = f"{FEED_TAG}:status"  # HASH "<sku>\x1f<channel>" -> "<status>\x1f<available>"
FEED_LEASE = f"{FEED_TAG}:lease"  # the publisher's lease (its random token)
FEED_DIRTY = f"{FEED_TAG}:dirty"  # SET of SKUs whose stock changed since they were judged
FEED_COUNTS = f"{FEED_TAG}:counts"  # HASH status -> transitions published to it
# Webhook deliveries of the feed (onestock/ops/deliver.py)
FEED_DELIVERED = f"{FEED_TAG}:delivered"  # HASH subscriber id -> seq delivered up to
FEED_UNDELIVERED = f"{FEED_TAG}:undelivered"  # STREAM of deliveries given up (kept, visible)
FEED_DELIVERY_COUNTS = f"{FEED_TAG}:dcounts"  # HASH "<subscriber>:<outcome>" -> count
FEED_DELIVERY_LEASE = f"{FEED_TAG}:dlease"  # the deliverer's lease
FEED_RETRYING = f"{FEED_TAG}:dretrying"  # HASH subscriber id -> transitions being retried now
FEED_DELIVERY_ERROR = f"{FEED_TAG}:derror"  # HASH subscriber id -> its last failed attempt

_slots: dict[str, int] = {}


def sku_slot(sku: str) -> int:
    """The cluster hash slot of a SKU's keys (cached: it is asked for every order line).
    What a script call may span is the dataset's layout's: ``Store.slot``."""
    slot = _slots.get(sku)
    if slot is None:
        slot = _slots[sku] = key_slot(stock(sku).encode())
    return slot


def one_slot(_sku: str) -> int:
    """``Store.slot`` in the one-server layout: any SKUs share a script call."""
    return 0


# Hot-SKU buckets: bucket 0 of a SKU is the SKU's own keys; bucket b > 0 is the "SKU" named
# "<sku>\x1c<b>", whose keys hash to another slot. Catalog ids never hold control characters.


def bucket(sku: str, b: int) -> str:
    """The internal SKU name of bucket ``b`` of ``sku``."""
    return sku if b == 0 else f"{sku}{BUCKET}{b}"


def public(name: str) -> str:
    """The catalog SKU of an internal name (a bucket's name, or the SKU itself)."""
    return name.partition(BUCKET)[0]


def lent(name: str) -> str:
    """HASH of a bucket's units in flight to another bucket: transfer id -> "<recipient
    bucket>\x1f<location>\x1f<units>..." (deleted once the recipient has them)."""
    return f"{sku_tag(name)}:lent"


def received(name: str, transfer: str) -> str:
    """Marks a transfer as received by this bucket (so it is applied once)."""
    return f"{sku_tag(name)}:got:{transfer}"


def capacity(location: str, day: int) -> str:
    """HASH of the orders routed to ``location`` on ``day`` (days since 1970, UTC): order id
    -> 1; its length is the day's count against the location's daily capacity."""
    return f"{PREFIX}:{{c:{location}}}:cap:{day}"


def lend_lock(sku: str) -> str:
    """Held while units move between the SKU's buckets (one mover at a time per SKU)."""
    return f"{sku_tag(sku)}:lendlock"


# Webhook deliveries of the fulfilment records (onestock/ops/deliver.py, the catalog's
# "record_subscribers"): in the feed's slot, so the one deliverer lease fences them too.
RECORD_DELIVERED = f"{FEED_TAG}:rdelivered"  # HASH "<subscriber>\x1f<shard>" -> "<entry id>:<i>"
RECORD_UNDELIVERED = f"{FEED_TAG}:rundelivered"  # STREAM of record deliveries given up (kept)
RECORD_DELIVERY_COUNTS = f"{FEED_TAG}:rdcounts"  # HASH "<subscriber>:<outcome>" -> count
RECORD_RETRYING = f"{FEED_TAG}:rdretrying"  # HASH subscriber id -> records being retried now
RECORD_DELIVERY_ERROR = f"{FEED_TAG}:rderror"  # HASH subscriber id -> its last failed attempt
