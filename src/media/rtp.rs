//! rtp: placeholder until its owner lands it.
