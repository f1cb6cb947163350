"""Per-session recurrent state: the store interface, its in-memory implementation, and the batcher."""
