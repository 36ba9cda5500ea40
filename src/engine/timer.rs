//! Placeholder: the hashed timer wheel lands here.
