-- Release this shard's expired reservations (up to the sweep limit); returns how many.
return sweep()
