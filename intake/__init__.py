"""The webhook intake: marketplace order webhooks in, canonical order events onto the input
shards, each stored (appended to Redis) before it is acknowledged."""
