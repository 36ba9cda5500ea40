//! The configuration schema: every block, every key, its type and its default.
//!
//! This module owns the data types only: the structs and enums that `config/voxd.yaml`
//! deserializes into, their documented defaults, and the [`Secret`] newtype. It must
//! not read files or the environment, must not decide what is valid (that is
//! `validate.rs`) and must not know about the reference engine's extra keys (that is
//! `compat.rs`). Every struct is `#[serde(default, deny_unknown_fields)]`, so a block
//! may name any subset of its keys and a typo never passes silently.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (password, API key, token).
///
/// Secrets come only from the environment; a secret never deserializes from a file
/// (any value given is dropped, so `to_masked_yaml` output can be read back safely).
/// `Debug`, `Display` and `Serialize` print `***` when set and `(unset)` otherwise, so
/// a secret cannot reach a log line or the output of `voxd check` by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Option<String>);

impl Secret {
    /// The text printed in place of a set secret.
    pub const MASK: &'static str = "***";
    /// The text printed for a secret that was not provided.
    pub const UNSET: &'static str = "(unset)";

    /// Wraps a secret value; an empty string counts as unset.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        if value.is_empty() {
            Secret(None)
        } else {
            Secret(Some(value))
        }
    }

    /// The secret in clear, for the one place that sends it (an auth header).
    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether a non-empty value was provided.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn mask(&self) -> &'static str {
        if self.is_set() {
            Self::MASK
        } else {
            Self::UNSET
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mask())
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mask())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.mask())
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts and drops any value: secrets are never read from serialized input.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Secret(None))
    }
}

fn localhost() -> String {
    "127.0.0.1".to_string()
}

fn loopback_peers() -> Vec<String> {
    vec!["127.0.0.1".to_string(), "::1".to_string()]
}

/// The whole voxd configuration. Block names follow the reference engine's
/// `config/ai-agent.yaml` so that file's media blocks load unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Asterisk REST Interface (ARI) connection.
    pub asterisk: AsteriskConfig,
    /// Which media transport Asterisk uses to hand calls to voxd.
    pub audio_transport: AudioTransport,
    /// AudioSocket (TCP) listener, used when `audio_transport: audiosocket`.
    pub audiosocket: AudioSocketConfig,
    /// ExternalMedia RTP (UDP) endpoint, used when `audio_transport: externalmedia`.
    pub external_media: ExternalMediaConfig,
    /// Outbound (provider to caller) playout buffering.
    pub streaming: StreamingConfig,
    /// Caller barge-in (interrupting the agent) detection.
    pub barge_in: BargeInConfig,
    /// Health and metrics HTTP endpoint (`/live`, `/ready`, `/health`, `/metrics`).
    pub health: HealthConfig,
    /// The provider used when a call does not choose one (`AI_PROVIDER` channel var).
    pub default_provider: ProviderName,
    /// AI provider settings.
    pub providers: ProvidersConfig,
    /// Named agents (`AI_AGENT` channel variable): provider, prompt, greeting, voice.
    pub agents: std::collections::BTreeMap<String, AgentConfig>,
    /// What a call does when its provider fails and cannot be resumed.
    pub provider_failure: ProviderFailureConfig,
    /// Media engine threads and I/O backend.
    pub engine: EngineConfig,
    /// Admission limits.
    pub limits: LimitsConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
}

/// URL scheme for ARI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AriScheme {
    /// Plain HTTP / WS.
    #[default]
    Http,
    /// HTTPS / WSS.
    Https,
}

/// `asterisk:` block: where ARI is and which Stasis application voxd registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsteriskConfig {
    /// Run the ARI call flow. Unset: on when ARI credentials are in the environment
    /// (`ASTERISK_ARI_USERNAME`); `false`: AudioSocket/RTP only (dialplan
    /// `AudioSocket()` installs, load tests); `true`: required (credentials must be
    /// set). See [`Config::ari_enabled`].
    pub enabled: Option<bool>,
    /// How the AudioSocket media leg is originated: `channel` (`POST /ari/channels`
    /// with an `AudioSocket/...` endpoint) or `external_media` (`POST
    /// /ari/channels/externalMedia` with `encapsulation=audiosocket`).
    pub media_originate: MediaOriginate,
    /// Dialplan context an agent's transfer goes to when it names none.
    pub transfer_context: Option<String>,
    /// ARI host name or IP address. Env: `ASTERISK_HOST`.
    pub host: String,
    /// ARI HTTP port (Asterisk `http.conf`).
    pub port: u16,
    /// `http` or `https` (WebSocket uses `ws`/`wss` to match).
    pub scheme: AriScheme,
    /// Stasis application name; the dialplan runs `Stasis(<app_name>)`.
    pub app_name: String,
    /// Verify the ARI TLS certificate when `scheme: https`.
    pub ssl_verify: bool,
    /// Extra CA bundle (PEM) for ARI TLS; none = system roots.
    pub ca_file: Option<String>,
    /// ARI user. SECRET: only from env `ASTERISK_ARI_USERNAME`.
    pub username: Secret,
    /// ARI password. SECRET: only from env `ASTERISK_ARI_PASSWORD`.
    pub password: Secret,
}

impl Default for AsteriskConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            media_originate: MediaOriginate::Channel,
            transfer_context: None,
            host: localhost(),
            port: 8088,
            scheme: AriScheme::Http,
            app_name: "asterisk-ai-voice-agent".to_string(),
            ssl_verify: true,
            ca_file: None,
            username: Secret::default(),
            password: Secret::default(),
        }
    }
}

/// How voxd originates an AudioSocket media leg through ARI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaOriginate {
    /// `POST /ari/channels?endpoint=AudioSocket/host:port/<uuid>/c(<format>)`.
    #[default]
    Channel,
    /// `POST /ari/channels/externalMedia?encapsulation=audiosocket&transport=tcp`.
    ExternalMedia,
}

/// Media transport between Asterisk and voxd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioTransport {
    /// AudioSocket over TCP (Asterisk connects to voxd).
    #[default]
    Audiosocket,
    /// ARI ExternalMedia over RTP/UDP.
    Externalmedia,
}

/// AudioSocket payload format (the `c(<format>)` of the AudioSocket dial string).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioSocketFormat {
    /// Signed linear 16-bit, 8 kHz (the reference engine's `slin`).
    Slin,
    /// Signed linear 16-bit, 12 kHz.
    Slin12,
    /// Signed linear 16-bit, 16 kHz.
    #[default]
    Slin16,
    /// Signed linear 16-bit, 24 kHz.
    Slin24,
    /// Signed linear 16-bit, 32 kHz.
    Slin32,
    /// Signed linear 16-bit, 48 kHz.
    Slin48,
    /// G.711 mu-law, 8 kHz.
    Ulaw,
}

impl AudioSocketFormat {
    /// Sample rate in Hz of this format.
    pub fn sample_rate_hz(self) -> u32 {
        match self {
            Self::Slin | Self::Ulaw => 8000,
            Self::Slin12 => 12000,
            Self::Slin16 => 16000,
            Self::Slin24 => 24000,
            Self::Slin32 => 32000,
            Self::Slin48 => 48000,
        }
    }

    /// The name Asterisk uses for this format (`slin16`, `ulaw`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slin => "slin",
            Self::Slin12 => "slin12",
            Self::Slin16 => "slin16",
            Self::Slin24 => "slin24",
            Self::Slin32 => "slin32",
            Self::Slin48 => "slin48",
            Self::Ulaw => "ulaw",
        }
    }
}

/// `audiosocket:` block: the TCP listener Asterisk's AudioSocket channels connect to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioSocketConfig {
    /// Bind address. Env: `AUDIOSOCKET_HOST`.
    pub host: String,
    /// Bind port (TCP). Env: `AUDIOSOCKET_PORT`.
    pub port: u16,
    /// Payload format requested in the dial string.
    pub format: AudioSocketFormat,
    /// Host Asterisk should dial (when voxd binds 0.0.0.0 or sits behind NAT); none = `host`.
    pub advertise_host: Option<String>,
    /// Largest accepted AudioSocket frame payload in bytes (1..=65535).
    pub max_frame_bytes: u32,
    /// Read deadline (ms): close a connection that delivers no complete frame for
    /// this long (nothing at all, a UUID then nothing, or a partial frame that
    /// stalls). Asterisk sends a frame every 20 ms while a call is up.
    pub read_timeout_ms: u32,
    /// Peers allowed to connect: IP addresses or CIDR blocks.
    pub allowed_remote_hosts: Vec<String>,
    /// With ARI on, also accept AudioSocket connections whose UUID voxd did not
    /// originate (dialplan `AudioSocket()` beside ARI calls); they get the default
    /// provider. Off: such connections are refused.
    pub accept_unoriginated: bool,
}

impl Default for AudioSocketConfig {
    fn default() -> Self {
        Self {
            host: localhost(),
            port: 8090,
            format: AudioSocketFormat::Slin16,
            advertise_host: None,
            max_frame_bytes: 8192,
            read_timeout_ms: 2000,
            allowed_remote_hosts: loopback_peers(),
            accept_unoriginated: false,
        }
    }
}

/// G.711 codec for ExternalMedia RTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtpCodec {
    /// mu-law (PCMU, payload type 0).
    #[default]
    Ulaw,
    /// A-law (PCMA, payload type 8).
    Alaw,
}

/// `external_media:` block: the RTP endpoint for ARI ExternalMedia channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalMediaConfig {
    /// Bind address for RTP. Env: `EXTERNAL_MEDIA_RTP_HOST`.
    pub rtp_host: String,
    /// Bind port for RTP (UDP). Env: `EXTERNAL_MEDIA_RTP_PORT`.
    pub rtp_port: u16,
    /// Optional port range `"A:B"` (as in the reference engine); must contain `rtp_port`.
    pub port_range: Option<String>,
    /// RTP payload codec.
    pub codec: RtpCodec,
    /// Peers whose RTP is accepted: IP addresses or CIDR blocks.
    pub allowed_remote_hosts: Vec<String>,
    /// Host given to Asterisk as `external_host`; none = `rtp_host`.
    pub advertise_host: Option<String>,
    /// End a call whose RTP stops for this long (ms).
    pub idle_timeout_ms: u32,
    /// Inbound jitter buffer depth (ms).
    pub jitter_depth_ms: u32,
    /// Per-call RTP rate cap: a source may send this many packets per second
    /// (with a burst of one second's worth); the excess is dropped and counted. A
    /// call sends 50.
    pub max_packets_per_second: u32,
}

impl Default for ExternalMediaConfig {
    fn default() -> Self {
        Self {
            rtp_host: localhost(),
            rtp_port: 18080,
            port_range: None,
            codec: RtpCodec::Ulaw,
            allowed_remote_hosts: loopback_peers(),
            advertise_host: None,
            idle_timeout_ms: 5000,
            jitter_depth_ms: 60,
            max_packets_per_second: 200,
        }
    }
}

impl ExternalMediaConfig {
    /// `port_range` parsed as `(first, last)`; `None` when unset or malformed
    /// (`validate()` reports malformed values).
    pub fn port_range_bounds(&self) -> Option<(u16, u16)> {
        let text = self.port_range.as_deref()?;
        let (a, b) = text.split_once(':')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    }
}

/// `streaming:` block: outbound playout buffer watermarks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Playout buffer capacity (ms of audio); 20..=10000.
    pub jitter_buffer_ms: u32,
    /// Audio buffered before playout starts (ms); low_watermark_ms..=jitter_buffer_ms.
    pub min_start_ms: u32,
    /// Below this depth (ms) playout is considered starving; 0..=min_start_ms.
    pub low_watermark_ms: u32,
    /// How long to wait for more provider audio before declaring underflow (ms).
    pub provider_grace_ms: u32,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            jitter_buffer_ms: 950,
            min_start_ms: 120,
            low_watermark_ms: 80,
            provider_grace_ms: 200,
        }
    }
}

/// `barge_in:` block: local energy detector that interrupts the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BargeInConfig {
    /// Detect caller speech during agent playout and flush it.
    pub enabled: bool,
    /// Speech must last this long (ms) to count as barge-in.
    pub min_ms: u32,
    /// RMS level of i16 samples that counts as speech (1..=32767).
    pub energy_threshold: u32,
    /// Ignore new barge-ins for this long after one (ms).
    pub cooldown_ms: u32,
    /// No barge-in during the first ms of each agent response.
    pub initial_protection_ms: u32,
    /// No barge-in for this long after agent playout ends (echo tail, ms).
    pub post_tts_end_protection_ms: u32,
}

impl Default for BargeInConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_ms: 150,
            energy_threshold: 700,
            cooldown_ms: 500,
            initial_protection_ms: 100,
            post_tts_end_protection_ms: 800,
        }
    }
}

/// `health:` block: the HTTP endpoint for probes and Prometheus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Bind address. Env: `HEALTH_BIND_HOST`.
    pub host: String,
    /// Bind port (TCP). Env: `HEALTH_BIND_PORT`.
    pub port: u16,
    /// Token of the admin endpoints (`/sessions`, `POST /reload`). SECRET: only from
    /// env `HEALTH_API_TOKEN` (or a 0600 file named by `HEALTH_API_TOKEN_FILE`).
    pub api_token: Secret,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            host: localhost(),
            port: 15000,
            api_token: Secret::default(),
        }
    }
}

/// `agents.<name>`: what a call with `AI_AGENT=<name>` gets. Unset fields fall back
/// to the provider's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Provider of this agent; none = `AI_PROVIDER` or `default_provider`.
    pub provider: Option<ProviderName>,
    /// Instructions (system prompt) for the session.
    pub prompt: Option<String>,
    /// Spoken first when the call connects.
    pub greeting: Option<String>,
    /// Output voice (OpenAI voice name or Deepgram speak model).
    pub voice: Option<String>,
}

/// What happens to a call whose provider failed (after one fast reconnect where
/// allowed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnProviderFailure {
    /// Play `provider_failure.prompt` to the caller (ARI), then hang up.
    #[default]
    AnnounceHangup,
    /// Send the caller back to the dialplan at `provider_failure.context`.
    DialplanRedirect,
    /// Keep the call up without an agent (the caller hears silence and can hang up).
    LeaveOpen,
}

/// `provider_failure:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderFailureConfig {
    /// One fast reconnect (new session) when the provider drops mid-call.
    pub reconnect: bool,
    /// Then: `announce_hangup` | `dialplan_redirect` | `leave_open`.
    pub on_provider_failure: OnProviderFailure,
    /// ARI media played before hanging up (`announce_hangup`).
    pub prompt: String,
    /// Dialplan context for `dialplan_redirect`; none = `asterisk.transfer_context`.
    pub context: Option<String>,
    /// Extension for `dialplan_redirect`.
    pub extension: String,
}

impl Default for ProviderFailureConfig {
    fn default() -> Self {
        Self {
            reconnect: true,
            on_provider_failure: OnProviderFailure::AnnounceHangup,
            prompt: "sound:an-error-has-occurred".to_string(),
            context: None,
            extension: "s".to_string(),
        }
    }
}

/// A provider voxd implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// Built-in simulator (no network, for tests and load generation).
    #[default]
    Sim,
    /// Built-in echo agent: the caller's audio comes straight back (fidelity tests).
    Echo,
    /// OpenAI Realtime (GA API).
    OpenaiRealtime,
    /// Deepgram Voice Agent v1.
    Deepgram,
    /// The reference engine's local STT/LLM/TTS WebSocket server.
    Local,
}

impl ProviderName {
    /// Every provider, in documentation order.
    pub const ALL: [ProviderName; 5] = [
        ProviderName::Sim,
        ProviderName::Echo,
        ProviderName::OpenaiRealtime,
        ProviderName::Deepgram,
        ProviderName::Local,
    ];

    /// The YAML name (`openai_realtime`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Echo => "echo",
            Self::OpenaiRealtime => "openai_realtime",
            Self::Deepgram => "deepgram",
            Self::Local => "local",
        }
    }
}

/// `providers:` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Built-in simulator.
    pub sim: SimProviderConfig,
    /// OpenAI Realtime.
    pub openai_realtime: OpenAiRealtimeConfig,
    /// Deepgram Voice Agent.
    pub deepgram: DeepgramConfig,
    /// Local STT/LLM/TTS server.
    pub local: LocalProviderConfig,
}

impl ProvidersConfig {
    /// Whether the named provider is enabled.
    pub fn is_enabled(&self, name: ProviderName) -> bool {
        match name {
            ProviderName::Sim => self.sim.enabled,
            ProviderName::Echo => true,
            ProviderName::OpenaiRealtime => self.openai_realtime.enabled,
            ProviderName::Deepgram => self.deepgram.enabled,
            ProviderName::Local => self.local.enabled,
        }
    }
}

/// `providers.sim`: a scripted fake agent that answers every turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimProviderConfig {
    /// Offer this provider to calls.
    pub enabled: bool,
    /// Delay between end of caller speech and the reply (ms).
    pub think_ms: u32,
    /// Length of each synthetic reply (ms of audio).
    pub reply_ms: u32,
    /// Reply with the caller's own audio instead of a tone.
    pub echo: bool,
}

impl Default for SimProviderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            think_ms: 300,
            reply_ms: 1500,
            echo: false,
        }
    }
}

/// OpenAI Realtime audio format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RealtimeAudioFormat {
    /// `audio/pcmu` (G.711 mu-law, 8 kHz).
    #[default]
    Pcmu,
    /// `audio/pcma` (G.711 A-law, 8 kHz).
    Pcma,
    /// `audio/pcm` at 24 kHz.
    Pcm24k,
}

/// OpenAI Realtime turn detection mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnDetectionType {
    /// Energy/VAD-based end of turn.
    #[default]
    ServerVad,
    /// Model-based end of turn.
    SemanticVad,
}

/// `providers.openai_realtime.turn_detection`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnDetectionConfig {
    /// `server_vad` or `semantic_vad`.
    #[serde(rename = "type")]
    pub kind: TurnDetectionType,
    /// VAD activation threshold (0..=1; server_vad only).
    pub threshold: f64,
    /// Audio kept before detected speech (ms; server_vad only).
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn (ms; server_vad only).
    pub silence_duration_ms: u32,
    /// Let the server start a response at end of turn.
    pub create_response: bool,
    /// Let caller speech interrupt a response in progress.
    pub interrupt_response: bool,
}

impl Default for TurnDetectionConfig {
    fn default() -> Self {
        Self {
            kind: TurnDetectionType::ServerVad,
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
        }
    }
}

/// `providers.openai_realtime`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiRealtimeConfig {
    /// Offer this provider to calls (needs env `OPENAI_API_KEY`).
    pub enabled: bool,
    /// WebSocket endpoint (`ws://` or `wss://`); `?model=` is appended.
    pub base_url: String,
    /// Realtime model name (GA models; `*-preview-*` beta models are retired).
    pub model: String,
    /// Output voice.
    pub voice: String,
    /// System instructions for the session.
    pub instructions: String,
    /// Spoken first when the call connects; none = wait for the caller.
    pub greeting: Option<String>,
    /// Audio format sent to OpenAI.
    pub input_format: RealtimeAudioFormat,
    /// Audio format requested from OpenAI.
    pub output_format: RealtimeAudioFormat,
    /// Server-side end-of-turn detection.
    pub turn_detection: TurnDetectionConfig,
    /// Transcribe the caller's audio with this model (e.g. `gpt-4o-mini-transcribe`)
    /// so logs and a reconnect's replayed history hold the caller's side too; none =
    /// off.
    pub input_transcription_model: Option<String>,
    /// Caller audio per `input_audio_buffer.append` (ms, a multiple of 20): 20 sends
    /// every frame at once; more batches frames into fewer, larger messages.
    pub append_ms: u32,
    /// TCP + TLS + WebSocket handshake limit (ms).
    pub connect_timeout_ms: u32,
    /// Read deadline (ms): voxd pings every third of it and ends the session
    /// (failure policy) when nothing at all arrives for this long (a dead path, a
    /// message that never completes).
    pub read_timeout_ms: u32,
    /// API key. SECRET: only from env `OPENAI_API_KEY`.
    pub api_key: Secret,
}

impl Default for OpenAiRealtimeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "wss://api.openai.com/v1/realtime".to_string(),
            model: "gpt-realtime".to_string(),
            voice: "alloy".to_string(),
            instructions: String::new(),
            greeting: None,
            input_format: RealtimeAudioFormat::Pcmu,
            output_format: RealtimeAudioFormat::Pcmu,
            turn_detection: TurnDetectionConfig::default(),
            input_transcription_model: None,
            append_ms: 20,
            connect_timeout_ms: 5000,
            read_timeout_ms: 30_000,
            api_key: Secret::default(),
        }
    }
}

/// `providers.deepgram`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepgramConfig {
    /// Offer this provider to calls (needs env `DEEPGRAM_API_KEY`).
    pub enabled: bool,
    /// Voice Agent WebSocket endpoint (`ws://` or `wss://`).
    pub base_url: String,
    /// Speech-to-text model (`agent.listen`). Reference name: `model`.
    pub listen_model: String,
    /// LLM provider type for `agent.think`.
    pub think_provider: String,
    /// LLM model for `agent.think`.
    pub think_model: String,
    /// Text-to-speech model (`agent.speak`). Reference name: `tts_model`.
    pub speak_model: String,
    /// Prompt for the think stage.
    pub instructions: String,
    /// Spoken first when the call connects; none = wait for the caller.
    pub greeting: Option<String>,
    /// `KeepAlive` sent after this long without audio to Deepgram (ms).
    pub keepalive_ms: u32,
    /// TCP + TLS + WebSocket handshake limit (ms).
    pub connect_timeout_ms: u32,
    /// Read deadline (ms): voxd pings every third of it and ends the session
    /// (failure policy) when nothing at all arrives for this long (a dead path, a
    /// message that never completes).
    pub read_timeout_ms: u32,
    /// API key. SECRET: only from env `DEEPGRAM_API_KEY`.
    pub api_key: Secret,
}

impl Default for DeepgramConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "wss://agent.deepgram.com/v1/agent/converse".to_string(),
            listen_model: "nova-3".to_string(),
            think_provider: "open_ai".to_string(),
            think_model: "gpt-4o-mini".to_string(),
            speak_model: "aura-2-thalia-en".to_string(),
            instructions: String::new(),
            greeting: None,
            keepalive_ms: 8000,
            connect_timeout_ms: 5000,
            read_timeout_ms: 30_000,
            api_key: Secret::default(),
        }
    }
}

/// `providers.local`: the reference engine's `local-ai-server`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalProviderConfig {
    /// Offer this provider to calls.
    pub enabled: bool,
    /// WebSocket endpoint (`ws://` or `wss://`).
    pub base_url: String,
    /// Caller audio batched per message (ms).
    pub chunk_ms: u32,
    /// TCP + WebSocket handshake limit (ms).
    pub connect_timeout_ms: u32,
    /// Read deadline (ms): voxd pings every third of it and ends the session
    /// (failure policy) when nothing at all arrives for this long.
    pub read_timeout_ms: u32,
    /// Optional auth token. SECRET: only from env `LOCAL_AI_AUTH_TOKEN`.
    pub auth_token: Secret,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "ws://127.0.0.1:8765".to_string(),
            chunk_ms: 320,
            connect_timeout_ms: 5000,
            read_timeout_ms: 30_000,
            auth_token: Secret::default(),
        }
    }
}

/// Media socket I/O backend. The default is epoll: on the 2-core development box
/// it took 8-9% less CPU per call-second than io_uring at 500 calls (medians of 3,
/// `perf/backends.sh`, perf/RESULTS.md), with the same timing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    /// Probe io_uring, fall back to epoll (one log line) when the kernel or a
    /// seccomp profile refuses it.
    Auto,
    /// io_uring only (start-up fails if refused).
    IoUring,
    /// epoll with recvmmsg/sendmmsg.
    #[default]
    Epoll,
}

/// `engine:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Media shard threads (one pinned per core); 0 = one per CPU in the affinity mask.
    pub shards: u32,
    /// Socket I/O backend.
    pub io_backend: IoBackend,
    /// Worker threads of the control runtime (providers, ARI, HTTP); 0 = one per 4
    /// shards, at least 1. One worker took 7-11% less CPU per call-second than two
    /// on the 2-core box (perf/RESULTS.md): fewer cross-thread wake-ups.
    pub control_threads: u32,
    /// While a shard has calls, its loop wakes on this grid (ms) and handles every
    /// packet, frame and control message that arrived since, in one pass, instead of
    /// waking for each packet (the control runtime is woken once per tick with what
    /// the tick read, if anything). 1 keeps frame
    /// timing at the pacing wheel's 1 ms resolution. 0 = wake on every socket event
    /// (more wake-ups and syscalls per call; perf/RESULTS.md has the comparison).
    pub tick_ms: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 0,
            io_backend: IoBackend::default(),
            control_threads: 0,
            tick_ms: 1,
        }
    }
}

impl EngineConfig {
    /// The control runtime's worker count: `control_threads`, or for 0 one per 4
    /// shards (at least 1).
    pub fn control_workers(&self, shards: usize) -> usize {
        match self.control_threads {
            0 => shards.div_ceil(4).max(1),
            n => n as usize,
        }
    }
}

/// `limits:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent calls accepted; further calls are refused (1..=100000).
    pub max_calls: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_calls: 4000 }
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems only.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The name `tracing` filters use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `logging:` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Minimum level logged.
    pub level: LogLevel,
    /// `human` or `json`.
    pub format: LogFormat,
    /// Log personal data (caller number, transcripts); off by default.
    pub pii: bool,
    /// Append-only audit log file (call start/end, admin actions); none = off.
    pub audit_path: Option<String>,
}

/// `shutdown:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, stop accepting calls and wait this long for calls to end (s).
    pub drain_seconds: u32,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 30 }
    }
}
