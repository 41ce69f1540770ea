"""Real time: GTFS-realtime feeds in, the network state known at each moment (``state``)."""
