"""fizzbot: learn how a group chat talks."""

__version__ = "0.1.0"
