"""The chat contract: speaker tokens and <EOT>, how messages are rendered, parsed and trimmed, and
who is who (the speaker map). Every stage (prepare, train, generate, serve) uses these and no
other rules, so what the model learns on is what it is asked to continue."""
