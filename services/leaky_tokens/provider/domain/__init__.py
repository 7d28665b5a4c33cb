"""Rules of the provider stubs: profiles, token counts, replies and injected faults."""
