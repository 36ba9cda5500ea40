//! (in progress) The `deepgram` provider client.
