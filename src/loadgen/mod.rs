//! Load generator building blocks (`voxd loadgen`): everything the load generator
//! needs to play Asterisk towards a running voxd and measure it.
//!
//! Owns: the caller signal ([`signal`]), the per-call and aggregate measurements and
//! the timing-SLO verdict ([`stats`]), process CPU/memory sampling from `/proc`
//! ([`procstat`]), the capacity ramp and its report and plot ([`ramp`], [`plot`]),
//! and the sans-IO emulated Asterisk caller that builds outbound
//! AudioSocket/RTP frames and parses what voxd sends back ([`caller`]).
//!
//! The socket side is in [`driver`] (the epoll load driver that runs the calls) and
//! [`ari_emu`] (an Asterisk ARI emulator on tokio: REST, events WebSocket, media legs
//! that really connect to voxd); [`rxstamp`] reads the kernel's receive stamps, so
//! that arrival times do not depend on when the driver's loop read the socket.
//!
//! Must not: read the clock or open sockets in the sans-IO blocks (`signal`,
//! `stats`, `caller`: every time is passed in as microseconds on the load
//! generator's monotonic clock), or allocate per frame on the send/receive path once
//! a call is set up.

pub mod ari_emu;
pub mod caller;
pub mod driver;
pub mod plot;
pub mod procstat;
pub mod provider_run;
pub mod provsim;
pub mod ramp;
pub mod rxstamp;
pub mod signal;
pub mod spawn;
pub mod stats;
pub mod via_ari;
