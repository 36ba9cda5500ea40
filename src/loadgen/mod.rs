//! Load generator building blocks (`voxd loadgen`): everything the load generator
//! needs to play Asterisk towards a running voxd and measure it, without the
//! sockets.
//!
//! Owns: the caller signal ([`signal`]), the per-call and aggregate measurements and
//! the timing-SLO verdict ([`stats`]), process CPU/memory sampling from `/proc`
//! ([`procstat`]), and the sans-IO emulated Asterisk caller that builds outbound
//! AudioSocket/RTP frames and parses what voxd sends back ([`caller`]).
//!
//! Must not: open sockets, read the clock (every time is passed in as microseconds
//! on the load generator's monotonic clock), spawn threads, or allocate per frame on
//! the send/receive path once a call is set up. The socket driver and the CLI wiring
//! live elsewhere and call into these blocks.

pub mod caller;
pub mod driver;
pub mod procstat;
pub mod signal;
pub mod stats;
