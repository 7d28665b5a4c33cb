"""The embedded mesh: what `leaky up` runs where, and its process supervisor."""
