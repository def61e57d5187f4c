//! The two-namespace lab most integration tests use:
//!
//! ```text
//!   client ns                          filter ns
//!   vc <------------- veth -------------> vf   (vpn-filter attached here)
//!   10.77.0.2 (registered)               10.77.0.1
//!   10.77.0.3 (unregistered)             fd77::1
//!   fd77::2 (registered), fd77::3 (unregistered)
//! ```
//!
//! Static neighbour entries both ways, so no ARP/NDP races.

use std::net::{IpAddr, SocketAddr};

use crate::netns::{neigh, veth, NetNs};

pub const FILTER_V4: &str = "10.77.0.1";
pub const REGISTERED_V4: &str = "10.77.0.2";
pub const UNREGISTERED_V4: &str = "10.77.0.3";
pub const FILTER_V6: &str = "fd77::1";
pub const REGISTERED_V6: &str = "fd77::2";
pub const UNREGISTERED_V6: &str = "fd77::3";

pub struct FilterLab {
    pub client: NetNs,
    pub filter: NetNs,
    pub client_if: String,
    pub filter_if: String,
}

impl FilterLab {
    pub fn new() -> FilterLab {
        crate::require_root();
        let client = NetNs::new("c");
        let filter = NetNs::new("f");
        let (client_if, filter_if) = ("vc".to_string(), "vf".to_string());
        veth(&client, &client_if, &filter, &filter_if);
        let lab = FilterLab {
            client,
            filter,
            client_if,
            filter_if,
        };
        lab.readdress();
        lab
    }

    /// Addresses and static neighbours on the veth pair (again, after it was re-created).
    pub fn readdress(&self) {
        let (client, filter) = (&self.client, &self.filter);
        let (client_if, filter_if) = (self.client_if.as_str(), self.filter_if.as_str());
        for a in [
            format!("{REGISTERED_V4}/24"),
            format!("{UNREGISTERED_V4}/24"),
        ] {
            client.ip(&["addr", "add", &a, "dev", client_if]);
        }
        for a in [
            format!("{REGISTERED_V6}/64"),
            format!("{UNREGISTERED_V6}/64"),
        ] {
            client.ip(&["addr", "add", &a, "dev", client_if, "nodad"]);
        }
        filter.ip(&["addr", "add", &format!("{FILTER_V4}/24"), "dev", filter_if]);
        filter.ip(&[
            "addr",
            "add",
            &format!("{FILTER_V6}/64"),
            "dev",
            filter_if,
            "nodad",
        ]);
        let (cmac, fmac) = (client.mac(client_if), filter.mac(filter_if));
        for a in [FILTER_V4, FILTER_V6] {
            neigh(client, client_if, a, &fmac);
        }
        for a in [
            REGISTERED_V4,
            UNREGISTERED_V4,
            REGISTERED_V6,
            UNREGISTERED_V6,
        ] {
            neigh(filter, filter_if, a, &cmac);
        }
    }

    /// XDP mode as `ip link` reports it on the filter interface: "xdp", "xdpgeneric" or "".
    pub fn xdp_mode_shown(&self) -> String {
        let out = self
            .filter
            .ip(&["-d", "link", "show", "dev", &self.filter_if]);
        for w in ["xdpgeneric", "xdpdrv", "xdpoffload", "xdp"] {
            if out
                .split_whitespace()
                .any(|t| t == w || t.starts_with(&format!("{w}/")))
            {
                return w.to_string();
            }
        }
        String::new()
    }
}

impl Default for FilterLab {
    fn default() -> Self {
        Self::new()
    }
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("test address"), port)
}

/// A registry feed (JSON) with one approved entry per `(id, prefixes)`.
pub fn registry_json(serial: u64, entries: &[(&str, &[&str])]) -> String {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(id, prefixes)| {
            serde_json::json!({
                "id": id,
                "holder": format!("holder of {id}"),
                "category": "company",
                "prefixes": prefixes,
                "status": "approved",
                "approved_at": "2020-01-01T00:00:00Z",
                "expires_at": null,
            })
        })
        .collect();
    serde_json::json!({ "serial": serial, "generated_at": "2026-11-27T10:00:00Z", "entries": entries })
        .to_string()
}
