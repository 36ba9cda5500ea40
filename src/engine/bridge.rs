//! Placeholder: the shard <-> control bridge (rings and wake-ups) lands here.
