//! Placeholder: load generator building blocks land here.
