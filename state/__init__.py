"""Everything that touches Redis: key layout, Lua scripts, the typed Store, the embedded server.

Nothing here knows about Bytewax or HTTP.
"""
