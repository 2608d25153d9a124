"""onestock: one inventory for every sales channel, decided at flash-sale peaks without oversell."""

__version__ = "0.1.0"
