//! (in progress) The `local` provider client.
