//! Placeholder: providers (Provider trait, echo, sim) land here.
