//! The program's maps as the controller sees them: their sizes ([`LoadOptions`]), the shape
//! each must have ([`expected_maps`], checked before a pinned map is reused), and lookup by
//! name in the loaded object.

use anyhow::{anyhow, Result};
use aya::{
    maps::{Map, MapType},
    Ebpf,
};
use vpn_filter_common::{
    maps, AllowValue, Config, FlowKey, FlowState, Protocol, RateState, SourceRate, STATS_LEN,
};

use super::{DEFAULT_ALLOW_V4_ENTRIES, DEFAULT_ALLOW_V6_ENTRIES, DEFAULT_FLOW_ENTRIES};

/// Map sizes and runtime settings fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub allow_v4_entries: u32,
    pub allow_v6_entries: u32,
    pub flow_entries: u32,
    /// Where the frames given to [`super::Filter::run_frame`] start. Attaching picks the
    /// program variant from each device's type regardless.
    pub frame_start: FrameStart,
}

/// Where a device's XDP frames start: Ethernet-like devices (ethernet, veth, bond, vlan...)
/// at L2, `tun`, `wireguard`, `ppp`, `gre`, `ipip` and other ARPHRD_NONE/PPP/tunnel devices
/// at the IP header. Each has its own program variant (`vpn_filter`, `vpn_filter_ip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameStart {
    #[default]
    Ethernet,
    Ip,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            allow_v4_entries: DEFAULT_ALLOW_V4_ENTRIES,
            allow_v6_entries: DEFAULT_ALLOW_V6_ENTRIES,
            flow_entries: DEFAULT_FLOW_ENTRIES,
            frame_start: FrameStart::Ethernet,
        }
    }
}

/// The shape a pinned map must have to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Every map this build pins, with the shape it expects (capacities from `options`).
pub fn expected_maps(options: &LoadOptions) -> Vec<MapShape> {
    use std::mem::size_of;
    let s = |n: usize| n as u32;
    vec![
        MapShape {
            name: maps::ALLOW_V4,
            map_type: MapType::LpmTrie,
            key_size: s(4 + 4),
            value_size: s(size_of::<AllowValue>()),
            max_entries: options.allow_v4_entries,
        },
        MapShape {
            name: maps::ALLOW_V6,
            map_type: MapType::LpmTrie,
            key_size: s(4 + 16),
            value_size: s(size_of::<AllowValue>()),
            max_entries: options.allow_v6_entries,
        },
        MapShape {
            name: maps::FAST_BITMAPS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: vpn_filter_common::FAST_BITMAP_WORDS,
        },
        MapShape {
            name: maps::FAST_SUMMARY,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: vpn_filter_common::FAST_SUMMARY_WORDS,
        },
        MapShape {
            name: maps::FAST_V4_LONG,
            map_type: MapType::Hash,
            key_size: s(size_of::<vpn_filter_common::FastKeyV4>()),
            value_size: 1,
            max_entries: options.allow_v4_entries,
        },
        MapShape {
            name: maps::FAST_V6,
            map_type: MapType::Hash,
            key_size: s(size_of::<vpn_filter_common::FastKeyV6>()),
            value_size: 1,
            max_entries: options.allow_v6_entries,
        },
        MapShape {
            name: maps::FAST_LENGTHS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: s(size_of::<vpn_filter_common::FastLengths>()),
            max_entries: 1,
        },
        MapShape {
            name: maps::VPN_ENDPOINTS_V4,
            map_type: MapType::LpmTrie,
            key_size: s(4 + 4),
            value_size: s(size_of::<vpn_filter_common::EndpointValue>()),
            max_entries: vpn_filter_common::DEFAULT_ENDPOINT_V4_ENTRIES,
        },
        MapShape {
            name: maps::VPN_ENDPOINTS_V6,
            map_type: MapType::LpmTrie,
            key_size: s(4 + 16),
            value_size: s(size_of::<vpn_filter_common::EndpointValue>()),
            max_entries: vpn_filter_common::DEFAULT_ENDPOINT_V6_ENTRIES,
        },
        MapShape {
            name: maps::ENDPOINT_BITMAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: vpn_filter_common::ENDPOINT_BITMAP_WORDS,
        },
        MapShape {
            name: maps::ENDPOINT_SUMMARY,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: vpn_filter_common::ENDPOINT_SUMMARY_WORDS,
        },
        MapShape {
            name: maps::ENDPOINT_STATS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: vpn_filter_common::MAX_PROVIDERS * 2,
        },
        MapShape {
            name: maps::POLICY,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 1,
            max_entries: Protocol::COUNT as u32,
        },
        MapShape {
            name: maps::CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: s(size_of::<Config>()),
            max_entries: 1,
        },
        MapShape {
            name: maps::FLOWS,
            map_type: MapType::LruHash,
            key_size: s(size_of::<FlowKey>()),
            value_size: s(size_of::<FlowState>()),
            max_entries: options.flow_entries,
        },
        MapShape {
            name: maps::FLOW_GATE,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: Protocol::COUNT as u32,
        },
        MapShape {
            name: maps::STATS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: STATS_LEN,
        },
        MapShape {
            name: maps::EVENTS,
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: vpn_filter_common::DEFAULT_EVENT_RING_BYTES,
        },
        MapShape {
            name: maps::EVENT_BUDGET,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: s(size_of::<RateState>()),
            max_entries: 2,
        },
        MapShape {
            name: maps::ALLOW_GEN,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        },
        MapShape {
            name: maps::REPEAT_SOURCES,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 4,
            max_entries: vpn_filter_common::REPEAT_SLOTS,
        },
        MapShape {
            name: maps::EVENT_LIMIT,
            map_type: MapType::Array,
            key_size: 4,
            value_size: s(size_of::<SourceRate>()),
            max_entries: vpn_filter_common::EVENT_LIMIT_SLOTS,
        },
    ]
}

/// The map `name` of the loaded object.
pub(super) fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// The map `name` of the loaded object, for writing.
pub(super) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}
