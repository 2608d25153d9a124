"""A randomized, fault-injecting check of the whole pipeline ("simulation", after FoundationDB
and Jepsen): seeded histories (``history``), a driver that runs them through the real code
with crashes and restarts (``run``), and a checker of the outputs against the contract's
invariants (``model``). ``python3 dev.py soak`` runs it for a time budget; a failing seed
prints the one command that replays it.
"""
