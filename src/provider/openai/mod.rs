//! (in progress) The `openai` provider client.
