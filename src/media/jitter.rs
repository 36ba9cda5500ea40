//! jitter: placeholder until its owner lands it.
