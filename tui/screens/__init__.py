"""The console's screens, one per number key."""
