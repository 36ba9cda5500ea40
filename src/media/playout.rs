//! playout: placeholder until its owner lands it.
