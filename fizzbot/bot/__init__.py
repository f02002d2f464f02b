"""`fizzbot bot`: fizzbot in the channel itself. One core (`core.py`: context, when to speak, the
endpoint, the persona) and thin platform adapters (`irc_adapter.py`, `discord_adapter.py`). The bot
is a client of the Serve endpoint's HTTP API: it imports no stage."""
