//! Per-call state machine (placeholder).
