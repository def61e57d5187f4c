//! Records shared by the vpn-filter XDP program (kernel side) and its controller (userspace).
//!
//! Every map key, map value and ring-buffer record crosses the kernel/user boundary through the
//! definitions in this crate and nowhere else, so the two sides cannot drift. Addresses and ports
//! are stored as big-endian byte arrays (network order, as on the wire): no byte-order mistakes
//! cross the boundary. IPv4 addresses in 16-byte fields occupy the first four bytes, the rest
//! zero, with `family` saying which it is.
//!
//! With the `user` feature the records implement `aya::Pod` so userspace can put them in maps.
#![no_std]

/// Name of the XDP program inside the object file.
pub const PROGRAM_NAME: &str = "vpn_filter";
/// The variant for devices whose frames start at the IP header (tun, wireguard, ppp...).
pub const PROGRAM_NAME_IP: &str = "vpn_filter_ip";

/// Map names, shared so userspace never spells them differently from the kernel.
pub mod maps {
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const POLICY: &str = "POLICY";
    pub const CONFIG: &str = "CONFIG";
    pub const FLOWS: &str = "FLOWS";
    pub const STATS: &str = "STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_LIMIT: &str = "EVENT_LIMIT";
    pub const FLOW_GATE: &str = "FLOW_GATE";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// Allowlist generation (single slot), raised by the controller after every sync that
    /// changed the allowlist; flows re-check their endpoints when it moved (see
    /// [`super::FlowState::generation`]).
    pub const ALLOW_GEN: &str = "ALLOW_GEN";
    /// Seed of the TCP stream-head hash, random per load (single u32 slot).
    pub const TCP_HEAD_SEED: &str = "TCP_HEAD_SEED";
    /// One bit per TCP stream slot, set while the slot may hold a stream's start (tests).
    pub const TCP_HEAD_LIVE: &str = "TCP_HEAD_LIVE";
    /// Repeat-source filter in front of the event budget (see [`super::REPEAT_SLOTS`]).
    pub const REPEAT_SOURCES: &str = "REPEAT_SOURCES";
    /// Fast-path verdict structures in front of the allowlist tries (see [`super::FastLengths`]).
    pub const FAST_BITMAPS: &str = "FAST_BITMAPS";
    /// Filter in front of the IPv4 fast bitmaps (see [`super::FAST_SUMMARY_WORDS`]).
    pub const FAST_SUMMARY: &str = "FAST_SUMMARY";
    pub const FAST_V4_LONG: &str = "FAST_V4_LONG";
    pub const FAST_V6: &str = "FAST_V6";
    pub const FAST_LENGTHS: &str = "FAST_LENGTHS";
    /// Known VPN endpoints (provider server lists), see [`super::EndpointValue`].
    pub const VPN_ENDPOINTS_V4: &str = "VPN_ENDPOINTS_V4";
    pub const VPN_ENDPOINTS_V6: &str = "VPN_ENDPOINTS_V6";
    /// Filter in front of the endpoint tries (see [`super::ENDPOINT_BITMAP_WORDS`]).
    pub const ENDPOINT_BITMAP: &str = "ENDPOINT_BITMAP";
    /// Filter in front of that filter (see [`super::ENDPOINT_SUMMARY_WORDS`]).
    pub const ENDPOINT_SUMMARY: &str = "ENDPOINT_SUMMARY";
    /// Per-provider verdict counters (see [`super::endpoint_counter_index`]).
    pub const ENDPOINT_STATS: &str = "ENDPOINT_STATS";
    /// Listed VPN domains: [`domain_hash`] of each domain -> 1 (see [`SNI_DOMAIN_ENTRIES`]).
    /// Not pinned: a controller fills it from its own list before it attaches.
    pub const TLS_SNI_DOMAINS: &str = "TLS_SNI_DOMAINS";
}

/// Version of the pinned map layout (`<bpffs>/vpn-filter/v<N>/maps`). Bump it whenever a map's
/// key, value or type changes, so a new build never reuses maps of a different shape.
/// 2: the endpoint maps, the `endpoints` protocol slot (POLICY, FLOW_GATE, STATS) and
/// [`Event::provider`]; the flow key's protocol, class and VLAN, the flow state's tokens and
/// allowlist generation, ALLOW_GEN and REPEAT_SOURCES.
/// 3: `EVENT_LIMIT` is an array of [`SourceRate`] slots, no longer an LRU hash; the
/// fallback closure's key holds the VLAN.
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// Compile-time map sizes. The allowlist tries are resized at load time from configuration
/// (`EbpfLoader::set_max_entries`); these are the defaults.
pub const DEFAULT_ALLOW_V4_ENTRIES: u32 = 1_048_576;
pub const DEFAULT_ALLOW_V6_ENTRIES: u32 = 262_144;
pub const DEFAULT_FLOW_ENTRIES: u32 = 262_144;
/// Slots of the per-source event limit (`EVENT_LIMIT`, [`SourceRate`] each). A power of two.
pub const EVENT_LIMIT_SLOTS: u32 = 65_536;
/// Ways of an `EVENT_LIMIT` bucket: a source may sit in any of the [`EVENT_LIMIT_WAYS`]
/// consecutive slots its hash names, so sources that share a bucket keep their own limits.
/// A power of two dividing [`EVENT_LIMIT_SLOTS`].
pub const EVENT_LIMIT_WAYS: u32 = 4;

/// Seeded hash of one endpoint (an address as four native-endian words, and a port or other
/// 16-bit tag). The kernel indexes its conversation, fallback and event-limit slots with it,
/// seeded at load from `TCP_HEAD_SEED`; userspace (tests, tools) computes the same slot.
#[inline(always)]
pub fn endpoint_hash(seed: u32, addr: &[u32; 4], port: u16) -> u32 {
    let mut h: u32 = seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < 4 {
        h = (h ^ addr[i]).wrapping_mul(0x0100_0193).rotate_left(13);
        i += 1;
    }
    h = (h ^ port as u32).wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 13)
}

/// First slot of the `EVENT_LIMIT` bucket of a source (address as four native-endian words,
/// family), for the seed in `TCP_HEAD_SEED`.
#[inline(always)]
pub fn event_limit_bucket(seed: u32, src: &[u32; 4], family: u8) -> u32 {
    endpoint_hash(seed, src, family as u16) & (EVENT_LIMIT_SLOTS - EVENT_LIMIT_WAYS)
}
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const DEFAULT_EVENT_RING_BYTES: u32 = 1 << 22;

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $text:expr, )* }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant = $value, )* }

        impl $name {
            /// Every variant, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// Number of variants (wire values are `0..COUNT`).
            pub const COUNT: usize = Self::ALL.len();

            /// Decodes a wire value; `None` for values this build does not know.
            #[inline(always)]
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// Stable lower-case name used in events, metrics and configuration.
            pub const fn name(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }

            /// Parses the stable name back.
            pub fn from_name(s: &str) -> Option<Self> {
                $( if s == $text { return Some($name::$variant); } )*
                None
            }
        }
    };
}

wire_enum! {
    /// VPN protocol families the classifier recognises. Policy, counters and events are all
    /// indexed by this enum.
    pub enum Protocol {
        /// Not a VPN (ordinary traffic).
        None = 0 => "none",
        WireGuard = 1 => "wireguard",
        OpenVpn = 2 => "openvpn",
        /// IKEv1/IKEv2 on UDP 500, UDP 4500 (after the non-ESP marker) and TCP (RFC 8229).
        Ike = 3 => "ike",
        /// ESP as IP protocol 50 and ESP-in-UDP on 4500 (RFC 3948).
        Esp = 4 => "esp",
        /// IPsec AH, IP protocol 51.
        Ah = 5 => "ah",
        /// L2TPv2/v3 control messages.
        L2tp = 6 => "l2tp",
        /// PPTP control on TCP 1723 and its enhanced GRE (version 1) data.
        Pptp = 7 => "pptp",
        /// Tailscale disco packets.
        TailscaleDisco = 8 => "tailscale_disco",
        /// OpenConnect/AnyConnect DTLS channel on UDP.
        OpenConnectDtls = 9 => "openconnect_dtls",
        /// SoftEther VPN's UDP acceleration packets.
        SoftEther = 10 => "softether",
        /// Not a signature: a flow from an unregistered client to a listed VPN endpoint (a
        /// provider's published server, a Tor relay). The policy slot `endpoints`.
        Endpoints = 11 => "endpoints",
        /// ExpressVPN Lightway over UDP: its 16-byte "He" header in front of DTLS records.
        Lightway = 12 => "lightway",
        /// tinc's TCP meta connection (its ID line).
        Tinc = 13 => "tinc",
        /// WireGuard whose message headers are rewritten (AmneziaWG, Mullvad LWO),
        /// recognised by the invariants of its transport packets over a flow. A heuristic:
        /// monitor by default.
        WireGuardObfuscated = 14 => "wireguard_obfuscated",
        /// OpenVPN behind a byte-scrambling layer (XOR patches, "obfuscated servers"),
        /// recognised by the pattern of its first packets. A heuristic: monitor by default.
        OpenVpnObfuscated = 15 => "openvpn_obfuscated",
        /// A standard DTLS ClientHello to UDP 443 that is not OpenConnect's resumption:
        /// FortiClient's DTLS tunnel, OpenConnect's new sessions, but also Citrix HDX (EDT)
        /// and any WebRTC peer on 443. Monitor by default.
        Dtls443 = 16 => "dtls_443",
        /// A flow whose first client payload looks fully encrypted (Shadowsocks, VMess,
        /// obfs4, Psiphon OSSH): the published rule set (bits per byte, printable shares,
        /// TLS/HTTP exemptions). A heuristic: monitor by default.
        FullyEncrypted = 17 => "fully_encrypted",
        /// A TLS ClientHello whose SNI is in the operator's VPN domain list (by suffix).
        TlsSni = 18 => "tls_sni",
        /// Any traffic between a client and a server after a VPN handshake between the two
        /// was dropped: the fallbacks (OpenConnect's TLS channel, Tailscale's DERP,
        /// SoftEther's TCP) cannot carry the tunnel.
        Fallback = 19 => "fallback",
    }
}

wire_enum! {
    /// The message that matched, finer than [`Protocol`].
    pub enum Message {
        None = 0 => "none",
        WgInitiation = 1 => "wg_initiation",
        WgResponse = 2 => "wg_response",
        WgCookie = 3 => "wg_cookie",
        WgData = 4 => "wg_data",
        WgPaddedInitiation = 5 => "wg_padded_initiation",
        WgPaddedResponse = 6 => "wg_padded_response",
        OvpnClientReset = 7 => "openvpn_client_reset",
        OvpnServerReset = 8 => "openvpn_server_reset",
        OvpnControl = 9 => "openvpn_control",
        OvpnData = 10 => "openvpn_data",
        IkeSaInit = 11 => "ike_sa_init",
        IkeOther = 12 => "ike_other",
        IkeTcp = 13 => "ike_tcp",
        EspIp = 14 => "esp_ip",
        EspUdp = 15 => "esp_udp",
        AhIp = 16 => "ah_ip",
        L2tpControl = 17 => "l2tp_control",
        PptpControl = 18 => "pptp_control",
        PptpGre = 19 => "pptp_gre",
        DiscoPacket = 20 => "disco",
        DtlsClientHello = 21 => "dtls_client_hello",
        DtlsRecord = 22 => "dtls_record",
        SoftEtherUdp = 23 => "softether_udp",
        /// A TCP/UDP packet to an address in the endpoint lists ([`Protocol::Endpoints`]).
        ListedEndpoint = 24 => "listed_endpoint",
        /// WireGuard initiation (148 B) whose reserved bytes carry a client id (Cloudflare
        /// WARP): weak, confirmed by the response echoing its sender index.
        WgIdInitiation = 25 => "wg_id_initiation",
        /// WireGuard response (92 B) with a client id in the reserved bytes.
        WgIdResponse = 26 => "wg_id_response",
        /// WireGuard handshake carried on TCP behind a 2-byte length (Mullvad udp-over-tcp).
        WgTcp = 27 => "wg_tcp",
        /// Lightway datagram: "He" header, then a DTLS record.
        LightwayDatagram = 28 => "lightway_datagram",
        /// tinc's ID line, `0 <name> 17[.<minor>]`.
        TincId = 29 => "tinc_id",
        /// SoftEther's HTTP connect request (`POST /vpnsvc/...`).
        SoftEtherHttp = 30 => "softether_http",
        /// A transport packet of WireGuard with rewritten headers: constant header and
        /// receiver index, rising counter.
        WgObfuscatedData = 31 => "wg_obfuscated_data",
        /// A packet of a flow that may be scrambled OpenVPN (sizes of its resets).
        OvpnObfuscated = 32 => "openvpn_obfuscated",
        /// A DTLS ClientHello to UDP 443 without a resumed 32-byte session id.
        DtlsClientHello443 = 33 => "dtls_client_hello_443",
        /// The first client payload of a flow, fully encrypted by the rule set.
        EncryptedFirstPayload = 34 => "encrypted_first_payload",
        /// A TLS ClientHello naming a listed domain.
        TlsClientHelloSni = 35 => "tls_client_hello_sni",
        /// A packet between a client and a server whose VPN handshake was dropped.
        FallbackPair = 36 => "fallback_pair",
        /// A server's DTLS handshake record (ServerHello, HelloVerifyRequest) from UDP 443:
        /// confirms a pending OpenConnect ClientHello.
        DtlsServerHello = 37 => "dtls_server_hello",
    }
}

wire_enum! {
    /// Per-protocol policy, set by the controller in the `POLICY` array map.
    pub enum PolicyMode {
        /// Not classified at all: the packet passes as ordinary traffic.
        Off = 0 => "off",
        /// Classified and reported, never dropped.
        Monitor = 1 => "monitor",
        /// Unregistered traffic is dropped and reported.
        Enforce = 2 => "enforce",
    }
}

wire_enum! {
    /// What the program did with a classified packet. Counters are per protocol x verdict.
    pub enum Verdict {
        /// An endpoint is registered: passed.
        Allowed = 0 => "allowed",
        /// Unregistered, policy enforce: dropped.
        Dropped = 1 => "dropped",
        /// Unregistered, policy monitor: passed and reported.
        Monitored = 2 => "monitored",
        /// Looks like the protocol but one packet is not enough: passed, flow remembered until
        /// the peer's reply or further packets confirm it.
        Pending = 3 => "pending",
        /// Protocol policy is off: passed without an allowlist lookup.
        Ignored = 4 => "ignored",
    }
}

wire_enum! {
    /// Why a verdict was reached (carried in events).
    pub enum Reason {
        None = 0 => "none",
        /// The packet alone matched the protocol's structure.
        Signature = 1 => "signature",
        /// A pending flow was confirmed by the peer's reply or by repeated packets.
        Confirmed = 2 => "confirmed",
        /// The flow was already judged; this is a later packet of it.
        FlowFollowUp = 3 => "flow_follow_up",
        /// A flow judged unregistered (blocked, monitored or pending) has an endpoint that the
        /// allowlist now holds: this first packet after the approval passes, and so does the
        /// rest of the flow.
        Registered = 4 => "registered",
        /// A flow allowed because of a registration that has since been removed: from this
        /// packet on it is judged as an unregistered flow of its protocol.
        Revoked = 5 => "revoked",
        /// The destination is in the endpoint lists ([`Protocol::Endpoints`]).
        ListedEndpoint = 6 => "listed_endpoint",
        /// The client's VPN handshake to this server was dropped moments ago: the rest of
        /// their traffic is too ([`Protocol::Fallback`]).
        Fallback = 7 => "fallback",
    }
}

wire_enum! {
    /// Parse and infrastructure counters, after the protocol x verdict block in `STATS`.
    pub enum Counter {
        /// Every packet the program saw.
        Packets = 0 => "packets",
        NonIp = 1 => "non_ip",
        Ipv4 = 2 => "ipv4",
        Ipv6 = 3 => "ipv6",
        /// Non-first IPv4/IPv6 fragments: no L4 header, passed (see README, "Fragments").
        Fragment = 4 => "fragment",
        /// Headers cut short by the end of the packet: passed.
        Truncated = 5 => "truncated",
        /// Header fields that contradict each other (bad IHL, lying lengths): passed.
        Malformed = 6 => "malformed",
        /// IPv6 extension header chains longer than the parser follows (Linux's own limits):
        /// judged by [`Config::ext_header_overflow`], dropped by default.
        ExtHeaderLimit = 7 => "ext_header_limit",
        /// Packets whose header checks made them VPN candidates (payload inspected).
        Candidates = 8 => "candidates",
        FlowHit = 9 => "flow_hit",
        FlowInsert = 10 => "flow_insert",
        FlowInsertFailed = 11 => "flow_insert_failed",
        AllowlistLookups = 12 => "allowlist_lookups",
        EventsEmitted = 13 => "events_emitted",
        /// Events not emitted because the source exceeded its event rate.
        EventsSuppressed = 14 => "events_suppressed",
        /// Events lost because the ring buffer was full.
        EventsLost = 15 => "events_lost",
        /// Internal errors (a map update that should not fail did).
        InternalError = 16 => "internal_error",
        /// TCP/UDP first fragments too small to hold the L4 header and the bytes the rules
        /// read ([`MIN_FIRST_FRAGMENT_PAYLOAD`], RFC 1858 tiny-fragment evasion): dropped. No
        /// real stack sends them.
        TinyFragment = 17 => "tiny_fragment",
        /// Flow entries whose verdict predates the current allowlist generation and whose
        /// endpoints were looked up again (one per flow per allowlist change).
        FlowRejudged = 18 => "flow_rejudged",
        /// Events emitted from the reserve for sources seen retrying while the per-CPU budget
        /// was spent (a random-source flood cannot hide a real, retrying client).
        EventsRepeatSource = 19 => "events_repeat_source",
        /// Endpoint trie lookups (packets whose destination passed the endpoint bitmap).
        EndpointLookups = 20 => "endpoint_lookups",
        /// Non-first fragments of a datagram whose first fragment was dropped: they cannot be
        /// reassembled by the receiver, and pass (counted here as well as in `fragment`).
        FragmentOfDropped = 21 => "fragment_of_dropped",
        /// Packets judged inside an encapsulation (PPPoE, MPLS, IP-in-IP, GRE, VXLAN,
        /// Geneve); see [`Event::encap`].
        Encapsulated = 22 => "encapsulated",
        /// TCP segments whose payload was held in a per-flow stream buffer because the first
        /// bytes of a candidate stream arrived split over segments.
        TcpStreamBuffered = 23 => "tcp_stream_buffered",
    }
}

/// Index of the protocol x verdict counter in `STATS`.
#[inline(always)]
pub const fn verdict_counter_index(protocol: Protocol, verdict: Verdict) -> u32 {
    (protocol as u32) * (Verdict::COUNT as u32) + verdict as u32
}

/// Index of a parse/infrastructure counter in `STATS`.
#[inline(always)]
pub const fn counter_index(counter: Counter) -> u32 {
    (Protocol::COUNT * Verdict::COUNT) as u32 + counter as u32
}

/// Number of slots in the `STATS` per-CPU array.
pub const STATS_LEN: u32 = (Protocol::COUNT * Verdict::COUNT + Counter::COUNT) as u32;

/// Value of an allowlist (LPM trie) entry: which registry entry the prefix belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowValue {
    /// 64-bit FNV-1a hash of the registry entry id ([`entry_tag`]); stable across restarts, so
    /// a controller can attribute a pinned map's entries to the feed it loads.
    pub entry_tag: u64,
}

/// FNV-1a 64 of a registry entry id: the tag stored in [`AllowValue`].
pub const fn entry_tag(id: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < id.len() {
        hash ^= id[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Capacity of the listed-domain map ([`maps::TLS_SNI_DOMAINS`]).
pub const SNI_DOMAIN_ENTRIES: u32 = 16_384;

/// Longest server name the kernel reads (longer names are not matched).
pub const SNI_MAX_NAME: usize = 128;

/// Seed of [`domain_hash`] (FNV-1a 64's offset basis).
pub const DOMAIN_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of [`domain_hash`]: folds in byte `b`, lowercased (ASCII).
#[inline(always)]
pub const fn domain_hash_step(h: u64, b: u8) -> u64 {
    // Branch-free lowercasing: the kernel's loop stays free of data-dependent branches.
    let upper = (b.wrapping_sub(b'A') < 26) as u8;
    let b = b | (upper << 5);
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Hash of a domain name: FNV-1a 64 over its bytes **from the last to the first**, ASCII
/// lowercased. Read backwards, every dot-suffix of a name is a prefix of the walk: the kernel
/// hashes a server name once, from its end, and looks the running hash up at every dot
/// (`a.b.example.com` -> `com`, `example.com`, `b.example.com`, `a.b.example.com`), so a
/// listed domain matches itself and its subdomains, and never a name that merely ends with
/// its letters (`notwindscribe.com`: the walk meets no dot where `windscribe.com` ends).
pub const fn domain_hash(name: &[u8]) -> u64 {
    let mut h = DOMAIN_HASH_SEED;
    let mut i = name.len();
    while i > 0 {
        i -= 1;
        h = domain_hash_step(h, name[i]);
    }
    h
}

/// Most providers the endpoint lists can name (ids `1..MAX_PROVIDERS`; 0 is "none").
pub const MAX_PROVIDERS: u32 = 1024;
pub const DEFAULT_ENDPOINT_V4_ENTRIES: u32 = 262_144;
pub const DEFAULT_ENDPOINT_V6_ENTRIES: u32 = 65_536;

/// Value of an endpoint (LPM trie) entry: whose server the prefix is, and which traffic to it
/// is judged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndpointValue {
    /// Provider id (`1..MAX_PROVIDERS`), mapped to a name by the controller.
    pub provider: u16,
    /// Destination port the listing is limited to, big-endian; zero: any port.
    pub port: [u8; 2],
    /// IP protocol the listing is limited to (6 TCP, 17 UDP); zero: both.
    pub ip_proto: u8,
    pub _pad: [u8; 3],
}

impl EndpointValue {
    /// The value packed into the u64 "tag" the controller's set diff works on.
    pub const fn tag(&self) -> u64 {
        (self.provider as u64)
            | ((u16::from_be_bytes(self.port) as u64) << 16)
            | ((self.ip_proto as u64) << 32)
    }

    pub const fn from_tag(tag: u64) -> EndpointValue {
        EndpointValue {
            provider: tag as u16,
            port: ((tag >> 16) as u16).to_be_bytes(),
            ip_proto: (tag >> 32) as u8,
            _pad: [0; 3],
        }
    }
}

/// Words of `ENDPOINT_BITMAP`: two regions of 2^24 bits. From word 0: bit `n` set when an
/// IPv4 endpoint prefix overlaps the /24 number `n`. From [`ENDPOINT_BITMAP_V6`]: bit `n` set
/// when an IPv6 endpoint prefix overlaps the addresses whose top 24 bits are `n`. A filter:
/// only a set bit leads to a trie lookup (which may still miss for longer prefixes).
pub const ENDPOINT_BITMAP_WORDS: u32 = 2 << 18;
/// First word of the IPv6 region of `ENDPOINT_BITMAP`.
pub const ENDPOINT_BITMAP_V6: u32 = 1 << 18;
/// `ENDPOINT_BITMAP` words summed up by one bit of `ENDPOINT_SUMMARY`: four words, 256 bits,
/// so an IPv4 /16 (or the IPv6 addresses sharing their top 16 bits).
pub const ENDPOINT_SUMMARY_SPAN: u32 = 4;
/// Words of `ENDPOINT_SUMMARY` (16 KiB): bit `g` set when any of `ENDPOINT_BITMAP`'s words
/// `4g..4g+4` is non-zero. Read first, it keeps ordinary traffic to many destinations off
/// the 4 MiB bitmap (a cache miss per packet).
pub const ENDPOINT_SUMMARY_WORDS: u32 = ENDPOINT_BITMAP_WORDS / ENDPOINT_SUMMARY_SPAN / 64;

/// `ENDPOINT_SUMMARY`'s words for an `ENDPOINT_BITMAP` image.
pub fn endpoint_summary(bitmap: &[u64]) -> [u64; ENDPOINT_SUMMARY_WORDS as usize] {
    let mut out = [0u64; ENDPOINT_SUMMARY_WORDS as usize];
    for (g, words) in bitmap.chunks(ENDPOINT_SUMMARY_SPAN as usize).enumerate() {
        if words.iter().any(|w| *w != 0) && g / 64 < out.len() {
            out[g / 64] |= 1 << (g % 64);
        }
    }
    out
}

/// Slot of `ENDPOINT_STATS` (a per-CPU array of `MAX_PROVIDERS * 2` counters) counting
/// packets of `provider` dropped (`monitored` false) or monitored.
#[inline(always)]
pub const fn endpoint_counter_index(provider: u16, monitored: bool) -> u32 {
    (provider as u32 % MAX_PROVIDERS) * 2 + monitored as u32
}

/// Runtime configuration, in the single slot of the `CONFIG` array map. A zero field means
/// "use the built-in default" (listed on each field), so an unset map is safe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// How long a flow judged an unregistered VPN keeps being dropped after its last packet
    /// (default 120 s).
    pub blocked_flow_timeout_ns: u64,
    /// How long a flow with a registered endpoint skips the allowlist lookup (default 30 s).
    pub allowed_flow_timeout_ns: u64,
    /// How long a weak detection waits for its confirmation (default 10 s).
    pub pending_flow_timeout_ns: u64,
    /// Events per source address per second before suppression (default 5).
    pub events_per_source_per_sec: u32,
    /// Events per CPU per second over all sources (default 10,000): a flood from millions of
    /// spoofed sources must not try to emit one record per packet.
    pub events_per_cpu_per_sec: u32,
    /// How the datapath answers "is this address registered?" ([`AllowlistLookup`]; 0 means
    /// [`DEFAULT_ALLOWLIST_LOOKUP`]).
    pub allowlist_lookup: u32,
    /// What to do with an IPv6 packet whose extension header chain is longer than the parser
    /// follows ([`ExtHeaderOverflow`]; 0 means drop).
    pub ext_header_overflow: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 3],
    /// How long a client and a server stay closed to each other after a VPN handshake
    /// between them was dropped ([`Protocol::Fallback`]; 0 means
    /// [`DEFAULT_FALLBACK_TIMEOUT_NS`]).
    pub fallback_timeout_ns: u64,
}

/// Default [`Config::fallback_timeout_ns`]: three minutes, longer than the fallbacks' own
/// retries (OpenConnect reconnects within seconds; SoftEther within a minute).
pub const DEFAULT_FALLBACK_TIMEOUT_NS: u64 = 180_000_000_000;

/// Capacity of the fallback-pair map (client, server): an LRU.
pub const FALLBACK_PAIR_ENTRIES: u32 = 65_536;

wire_enum! {
    /// [`Config::ext_header_overflow`]: the policy for IPv6 extension header chains longer
    /// than Linux itself accepts on a forwarding path.
    pub enum ExtHeaderOverflow {
        /// Drop (the default): the chain could hide a VPN packet, and no real stack sends it.
        Drop = 0 => "drop",
        /// Pass without inspection (counted as `ext_header_limit`).
        Pass = 1 => "pass",
    }
}

/// Bits of [`Event::encap`]: the encapsulations a packet was found inside (outer ones first
/// in [`ENCAP_NAMES`]).
pub const ENCAP_PPPOE: u8 = 1 << 0;
pub const ENCAP_MPLS: u8 = 1 << 1;
/// IPv4/IPv6 in IPv4/IPv6 (IP protocols 4 and 41).
pub const ENCAP_IP_IN_IP: u8 = 1 << 2;
/// GRE version 0 carrying IPv4, IPv6 or Ethernet.
pub const ENCAP_GRE: u8 = 1 << 3;
/// VXLAN (UDP 4789).
pub const ENCAP_VXLAN: u8 = 1 << 4;
/// Geneve (UDP 6081).
pub const ENCAP_GENEVE: u8 = 1 << 5;
/// More than one VLAN tag (QinQ, 802.1ad, 0x9100).
pub const ENCAP_VLAN_STACK: u8 = 1 << 6;
/// Names of the [`Event::encap`] bits, by bit position.
pub const ENCAP_NAMES: [&str; 7] = [
    "pppoe",
    "mpls",
    "ip_in_ip",
    "gre",
    "vxlan",
    "geneve",
    "vlan_stack",
];

/// TCP/UDP first fragments with fewer L4 payload bytes than this are tiny fragments
/// ([`Counter::TinyFragment`]). Real stacks fragment at the path MTU (at least 576 bytes for
/// IPv4, 1280 for IPv6), so their first fragments are far larger.
pub const MIN_FIRST_FRAGMENT_PAYLOAD: u32 = 64;

pub const DEFAULT_BLOCKED_FLOW_TIMEOUT_NS: u64 = 120_000_000_000;
pub const DEFAULT_ALLOWED_FLOW_TIMEOUT_NS: u64 = 30_000_000_000;
pub const DEFAULT_PENDING_FLOW_TIMEOUT_NS: u64 = 10_000_000_000;
pub const DEFAULT_EVENTS_PER_SOURCE_PER_SEC: u32 = 5;
pub const DEFAULT_EVENTS_PER_CPU_PER_SEC: u32 = 10_000;
/// [`AllowlistLookup`] used when [`Config::allowlist_lookup`] is zero.
pub const DEFAULT_ALLOWLIST_LOOKUP: AllowlistLookup = AllowlistLookup::Fast;

wire_enum! {
    /// How the datapath decides whether an address is registered (the value of
    /// [`Config::allowlist_lookup`]). All give the same answers; they differ in cost.
    pub enum AllowlistLookup {
        /// The built-in default ([`DEFAULT_ALLOWLIST_LOOKUP`]).
        Default = 0 => "default",
        /// The LPM tries alone (`ALLOW_V4`, `ALLOW_V6`).
        Trie = 1 => "trie",
        /// IPv4: a bitmap over /24s for prefixes of /24 and shorter, exact-match hash probes
        /// for the longer lengths present. IPv6: exact-match hash probes over the lengths
        /// present (the trie when more than [`FAST_V6_MAX_LENGTHS`] lengths are in use).
        Fast = 2 => "fast",
        /// IPv4: the /24 bitmap, then the trie only when longer prefixes exist. IPv6: the
        /// trie. (A benchmark comparison point.)
        BitmapTrie = 3 => "bitmap_trie",
    }
}

/// Words of the fast path's bitmaps (`FAST_BITMAPS`): three regions of 2^24 bits each.
/// From word 0: bit `n` set when the IPv4 /24 number `n` lies in a registered prefix of /24
/// or shorter (exact). From [`FAST_BITMAP_V4_LONG`]: bit `n` set when a /25../32 prefix lies
/// in the /24 number `n` (a filter: only then are the long-prefix hashes probed). From
/// [`FAST_BITMAP_V6`]: bit [`fast_v6_filter_bit`]`(x)` set for every /32 `x` (top 32 bits of
/// the address) that an IPv6 prefix overlaps (a filter in front of the IPv6 hashes, unused
/// while [`FastLengths::v6_unfiltered`] is set).
pub const FAST_BITMAP_WORDS: u32 = 3 << 18;
/// First word of the IPv4 long-prefix filter in `FAST_BITMAPS`.
pub const FAST_BITMAP_V4_LONG: u32 = 1 << 18;
/// Words of `FAST_SUMMARY` (8 KiB): bit `n` set when the IPv4 /16 number `n` holds a /24
/// marked in either IPv4 region of `FAST_BITMAPS` (four words each). Read first, it keeps a
/// flood from sources in unregistered /16s off the 4 MiB of IPv4 bitmaps (two cache misses
/// per packet). Always a superset of the bitmaps: the controller widens it before the bitmaps
/// grow and narrows it after they shrink.
pub const FAST_SUMMARY_WORDS: u32 = 1 << 10;

/// `FAST_SUMMARY`'s words for a `FAST_BITMAPS` image.
pub fn fast_summary(bitmap: &[u64]) -> [u64; FAST_SUMMARY_WORDS as usize] {
    let mut out = [0u64; FAST_SUMMARY_WORDS as usize];
    let long = FAST_BITMAP_V4_LONG as usize;
    for g in 0..(FAST_SUMMARY_WORDS as usize * 64) {
        let words = g * 4..g * 4 + 4;
        let marked = |base: usize| {
            bitmap
                .get(base + words.start..base + words.end)
                .is_some_and(|w| w.iter().any(|w| *w != 0))
        };
        if marked(0) || marked(long) {
            out[g / 64] |= 1 << (g % 64);
        }
    }
    out
}
/// First word of the IPv6 filter in `FAST_BITMAPS`.
pub const FAST_BITMAP_V6: u32 = 2 << 18;
/// The bit of the IPv6 filter for the /32 whose top 32 bits are `top32` (Fibonacci hashing
/// onto 2^24 bits).
#[inline(always)]
pub const fn fast_v6_filter_bit(top32: u32) -> u32 {
    top32.wrapping_mul(0x9e37_79b1) >> 8
}

/// IPv6 prefixes shorter than this leave the IPv6 filter unused (too many /32s to mark).
pub const FAST_V6_FILTER_MIN_LEN: u8 = 16;

/// Most distinct IPv6 prefix lengths the fast path probes; more and IPv6 uses the trie.
pub const FAST_V6_MAX_LENGTHS: usize = 16;
/// [`FastLengths::v6_count`] value meaning "IPv6 lookups use the trie".
pub const FAST_V6_USE_TRIE: u8 = 0xff;

/// Key of the fast path's IPv4 hash (`FAST_V4_LONG`, prefixes /25../32): the prefix address
/// (host bits zero) and its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FastKeyV4 {
    pub addr: [u8; 4],
    pub len: u8,
    pub _pad: [u8; 3],
}

/// Key of the fast path's IPv6 hash (`FAST_V6`, every IPv6 prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FastKeyV6 {
    pub addr: [u8; 16],
    pub len: u8,
    pub _pad: [u8; 3],
}

/// Which prefix lengths the fast path's hashes hold (single slot of `FAST_LENGTHS`). The
/// controller only adds lengths before adding entries and removes them after removing entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FastLengths {
    /// Bit `len - 25` set when `FAST_V4_LONG` may hold prefixes of length `len` (25..=32).
    pub v4_long: u32,
    /// Number of valid entries of `v6`, or [`FAST_V6_USE_TRIE`].
    pub v6_count: u8,
    /// 1 when an IPv6 prefix is shorter than [`FAST_V6_FILTER_MIN_LEN`]: the IPv6 filter is
    /// not consulted.
    pub v6_unfiltered: u8,
    pub _pad: [u8; 2],
    /// IPv6 lengths present, longest first.
    pub v6: [u8; FAST_V6_MAX_LENGTHS],
}

/// Key of the flow map: the two endpoints in canonical order (lower address/port first), so
/// both directions of a flow find the same entry, the VPN protocol judged, and the VLAN.
///
/// Each protocol has its own entry on a 5-tuple: a packet is judged only against the state of
/// the protocol it was recognised as, so a decoy of one protocol can neither absorb another
/// protocol's handshake nor make its packets follow-ups. Flows in different VLANs never share
/// state (tenants with overlapping private addresses); the allowlist itself is global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub lo_addr: [u8; 16],
    pub hi_addr: [u8; 16],
    pub lo_port: [u8; 2],
    pub hi_port: [u8; 2],
    pub ip_proto: u8,
    pub family: u8,
    /// [`Protocol`] of the entry.
    pub protocol: u8,
    /// Within a protocol, which conversation: [`FLOW_CLASS_DATA`] for WireGuard transport
    /// data (a data-only flow), 0 for handshakes and everything else. A data-shaped decoy
    /// cannot then absorb a padded handshake on the same 5-tuple.
    pub class: u8,
    /// Outermost VLAN id (0 untagged), big-endian.
    pub vlan: [u8; 2],
    pub _pad2: [u8; 2],
}

impl FlowKey {
    /// The canonical key of a packet's flow for `protocol`/`class`: the lower (address, port)
    /// endpoint first, so both directions share one entry. Also returns whether the packet's
    /// source is the `lo` endpoint. The one definition the XDP program and replay use.
    /// `(src, sport)`/`(dst, dport)` as the packet travelled; `vlan` the outermost VLAN id.
    #[inline(always)]
    #[expect(
        clippy::too_many_arguments,
        reason = "a struct of them would cost 40 bytes of the XDP program's 512-byte stack"
    )]
    pub fn canonical(
        src: &[u8; 16],
        sport: u16,
        dst: &[u8; 16],
        dport: u16,
        ip_proto: u8,
        family: u8,
        vlan: u16,
        protocol: u8,
        class: u8,
    ) -> (FlowKey, bool) {
        // Compared as big-endian words: the same order as the bytes, without a memcmp the
        // BPF target does not have.
        let word = |a: &[u8; 16], i: usize| {
            u64::from_be_bytes([
                a[i],
                a[i + 1],
                a[i + 2],
                a[i + 3],
                a[i + 4],
                a[i + 5],
                a[i + 6],
                a[i + 7],
            ])
        };
        let src_first = (word(src, 0), word(src, 8), sport) <= (word(dst, 0), word(dst, 8), dport);
        let (a, ap, b, bp) = if src_first {
            (*src, sport, *dst, dport)
        } else {
            (*dst, dport, *src, sport)
        };
        (
            FlowKey {
                lo_addr: a,
                hi_addr: b,
                lo_port: ap.to_be_bytes(),
                hi_port: bp.to_be_bytes(),
                ip_proto,
                family,
                protocol,
                class,
                vlan: vlan.to_be_bytes(),
                _pad2: [0; 2],
            },
            src_first,
        )
    }
}

wire_enum! {
    /// State of a flow in the flow map.
    pub enum FlowStatus {
        None = 0 => "none",
        /// A weak detection waiting for confirmation.
        Pending = 1 => "pending",
        /// An unregistered VPN flow: dropped (or, under monitor, reported) in both directions.
        Blocked = 2 => "blocked",
        /// An unregistered VPN flow under a monitor policy.
        Monitored = 3 => "monitored",
        /// An endpoint is registered: passes without another allowlist lookup.
        Allowed = 4 => "allowed",
    }
}

/// Value of the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Monotonic time (the kernel's coarse clock, `bpf_ktime_get_coarse_ns`) after which the
    /// entry is stale. Every packet that belongs to the flow moves it on (pending entries
    /// too: a late reply still confirms).
    pub expires_ns: u64,
    /// Identifier of the side that created the entry: the OpenVPN client session id, the
    /// WireGuard sender index (first four bytes), the ESP SPI and sequence number.
    pub token: [u8; 8],
    /// Identifier of the other side once seen: the OpenVPN server session id, the WireGuard
    /// responder's index, the reverse direction's ESP SPI. Follow-up packets of a blocked
    /// flow must carry one of the two tokens to be dropped as the flow's own.
    pub peer_token: [u8; 8],
    /// Packets seen on this flow while pending (for confirmation by repetition).
    pub packets: u32,
    /// Allowlist generation ([`maps::ALLOW_GEN`], low 32 bits) the verdict was taken under.
    /// When the controller changes the allowlist the generation moves, and the next packet
    /// of every flow looks its endpoints up again: approvals and revocations reach live flows
    /// within one sync, at the cost of one lookup per flow, with no walk of the flow map.
    pub generation: u32,
    /// OpenVPN tls-crypt-v2: the packet-id time of the client's reset, which its control
    /// packets repeat in clear (zero when not applicable).
    pub aux: [u8; 4],
    /// OpenVPN: the first four bytes of the first data packet seen while the flow was
    /// allowed (opcode and peer id), so a revoked flow's data can be told from other traffic.
    pub data_head: [u8; 4],
    /// [`FlowStatus`].
    pub status: u8,
    /// [`Protocol`].
    pub protocol: u8,
    /// [`Message`] of the packet that created the entry.
    pub message: u8,
    /// 1 when the packet that created the entry came from the `lo` endpoint of the key.
    pub from_lo: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// [`FlowKey::class`] of WireGuard transport-data entries.
pub const FLOW_CLASS_DATA: u8 = 1;

/// Bits of [`FlowState::flags`].
pub mod flow_flags {
    /// Several different tokens were seen from the creating side while pending (a retry with
    /// a new session id or index, or a decoy): the reply confirms without echoing a
    /// particular one, so a decoy cannot keep the real handshake from being confirmed.
    pub const ANY_TOKEN: u8 = 1;
    /// ESP-in-UDP: the reverse direction sent an ESP-shaped packet with its own SPI.
    pub const ESP_REVERSE: u8 = 2;
    /// ESP-in-UDP: the creating direction sent the same SPI with a higher sequence number.
    pub const ESP_ADVANCED: u8 = 4;
    /// The kind of packet that created the entry came from the other side too (a decoy, or
    /// roles the other way round): the reply confirms from either side.
    pub const ANY_SIDE: u8 = 8;
}

/// Slots of the repeat-source filter (`REPEAT_SOURCES`, u32 each: 16 MiB). A power of two.
pub const REPEAT_SLOTS: u32 = 1 << 22;
/// Length of one repeat-source window: a source seen again within two windows counts as
/// retrying.
pub const REPEAT_WINDOW_NS: u64 = 8_000_000_000;
/// A retrying source is reported from the reserve at most once per this many windows (56 s).
pub const REPEAT_REPORT_WINDOWS: u8 = 7;
/// Events per CPU per second kept back for retrying sources once the budget is spent.
pub const REPEAT_RESERVE_PER_SEC: u32 = 200;
/// Suppressed events per CPU per second that consult the repeat-source filter; the rest of
/// the second's are suppressed without it. A slot is a random access into 16 MiB (about
/// 130 ns of a 500-600 ns flood packet on veth, on the 2-CPU test VM), and past a few
/// hundred thousand sources a second the flood overwrites a retrying client's slot before
/// its next retry anyway (a slot survives `t` seconds of `r` new sources a second with
/// probability exp(-r t / REPEAT_SLOTS)): under this cap the filter keeps working, above it
/// the flood's packets cost no more than their counters.
pub const REPEAT_CHECKS_PER_SEC: u32 = 250_000;

/// Address family values used in [`Event::family`] and [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A classified packet reported to userspace through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// When the packet was judged: CLOCK_MONOTONIC as of the last timer tick
    /// (`bpf_ktime_get_coarse_ns`, a few milliseconds behind at most).
    pub ts_ns: u64,
    /// Ingress interface index.
    pub ifindex: u32,
    /// Length of the whole frame in bytes.
    pub pkt_len: u32,
    /// Source and destination address, big-endian; IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source and destination port, big-endian (zero for ESP/AH/GRE).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// Events for this source that were suppressed by the rate limit since its last event.
    pub suppressed: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IP protocol number (17 UDP, 6 TCP, 47 GRE, 50 ESP, 51 AH).
    pub ip_proto: u8,
    /// [`Protocol`].
    pub protocol: u8,
    /// [`Message`].
    pub message: u8,
    /// [`Verdict`].
    pub verdict: u8,
    /// [`Reason`].
    pub reason: u8,
    /// Outermost VLAN id (0 when untagged), big-endian.
    pub vlan: [u8; 2],
    /// Provider id of the listed endpoint ([`Protocol::Endpoints`] events; 0 otherwise).
    pub provider: u16,
    /// Encapsulations the packet was found inside ([`ENCAP_PPPOE`]... bits; 0 for none).
    pub encap: u8,
    pub _pad: [u8; 5],
}

/// Per-source event rate-limit state (value of `EVENT_LIMIT`, keyed by the 16-byte source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    /// Start of the current one-second window.
    pub window_start_ns: u64,
    /// Events emitted in the current window.
    pub emitted: u32,
    /// Events suppressed since the last emitted one (per source); in the per-CPU budget
    /// (`EVENT_BUDGET` slot 0), suppressed in the current window.
    pub suppressed: u32,
}

/// A slot of the per-source event limit (`EVENT_LIMIT`, an array of [`EVENT_LIMIT_WAYS`]-way
/// buckets, the bucket named by a seeded hash of the source): the source's address (as four
/// native-endian words) and family, then its [`RateState`]. The address is compared whole,
/// so two sources never share one limit. A source found in no way of its bucket takes the
/// way whose window started longest ago (an unused or expired one first); only when more
/// than [`EVENT_LIMIT_WAYS`] sources are live in one bucket at once does that reset a live
/// source, which can then only get an extra event through (still within the per-CPU
/// budget), never lose one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceRate {
    pub src: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; 0 in a slot never used.
    pub family: u32,
    pub _pad: u32,
    pub rate: RateState,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, made only of integers and byte arrays, with
    // explicit padding fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for AllowValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for SourceRate {}
    unsafe impl aya::Pod for FastKeyV4 {}
    unsafe impl aya::Pod for FastKeyV6 {}
    unsafe impl aya::Pod for FastLengths {}
    unsafe impl aya::Pod for EndpointValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn records_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(size_of::<FlowState>(), 48);
        assert_eq!(size_of::<Event>(), 72);
        assert_eq!(size_of::<EndpointValue>(), 8);
        assert_eq!(size_of::<Config>(), 48);
        assert_eq!(size_of::<FastKeyV4>(), 8);
        assert_eq!(size_of::<FastKeyV6>(), 20);
        assert_eq!(size_of::<FastLengths>(), 24);
        assert_eq!(size_of::<RateState>(), 16);
    }

    #[test]
    fn names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_name(p.name()), Some(*p));
            assert_eq!(Protocol::from_u8(*p as u8), Some(*p));
        }
        for m in Message::ALL {
            assert_eq!(Message::from_u8(*m as u8), Some(*m));
        }
        assert_eq!(Protocol::from_u8(Protocol::COUNT as u8), None);
    }

    #[test]
    fn counter_indices_do_not_overlap() {
        let last_verdict = verdict_counter_index(Protocol::Endpoints, Verdict::Ignored);
        assert!(last_verdict < counter_index(Counter::Packets));
        assert_eq!(counter_index(Counter::TcpStreamBuffered) + 1, STATS_LEN);
    }

    #[test]
    fn endpoint_value_round_trips_through_its_tag() {
        let v = EndpointValue {
            provider: 1023,
            port: 443u16.to_be_bytes(),
            ip_proto: 17,
            _pad: [0; 3],
        };
        assert_eq!(EndpointValue::from_tag(v.tag()), v);
    }

    #[test]
    fn domain_hash_walks_suffixes_from_the_end() {
        let name = b"A.b.Example.COM";
        // The running hash where the walk meets each dot is the hash of the suffix after it.
        let mut h = DOMAIN_HASH_SEED;
        let mut at_dots = [0u64; 3];
        let mut dots = 0;
        let mut i = name.len();
        while i > 0 {
            i -= 1;
            if name[i] == b'.' {
                at_dots[dots] = h;
                dots += 1;
            }
            h = domain_hash_step(h, name[i]);
        }
        assert_eq!(dots, 3);
        assert_eq!(at_dots[0], domain_hash(b"com"));
        assert_eq!(at_dots[1], domain_hash(b"example.com"));
        assert_eq!(at_dots[2], domain_hash(b"b.example.com"));
        assert_eq!(h, domain_hash(b"a.b.example.com"));
        // FNV-1a 64 of the reversed, lowercased bytes.
        assert_eq!(domain_hash(b"A"), entry_tag(b"a"));
        assert_eq!(domain_hash(b"ab"), entry_tag(b"ba"));
        assert_ne!(
            domain_hash(b"notwindscribe.com"),
            domain_hash(b"windscribe.com")
        );
    }

    #[test]
    fn entry_tag_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(entry_tag(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(entry_tag(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
