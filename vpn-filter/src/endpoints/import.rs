//! Converters from providers' published server lists to an endpoint feed
//! (`vpn-filter endpoints import --format FORMAT FILE`). Each reads only the fields named in
//! docs/endpoints.md; everything else in the document is ignored, so additions upstream do not
//! break the import. The samples in tests/fixtures/endpoints/ are built from the published
//! schemas.
//!
//! The addresses taken are those clients connect to: Tor relays' OR addresses (Onionoo
//! `or_addresses`, consensus `r`/`a` lines), Mullvad's `ipv4_addr_in`/`ipv6_addr_in`, NordVPN's
//! `station`/`ipv6_station` and entry `ips`, Proton's `EntryIP` (not `ExitIP`: exit addresses
//! are where tunnelled traffic leaves, not where clients go).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use serde_json::Value;

use super::Scope;
use crate::registry::Prefix;

/// The formats `endpoints import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Tor Onionoo `details` document (`relays[].or_addresses`).
    TorOnionoo,
    /// Tor network-status consensus (`r` and `a` lines).
    TorConsensus,
    /// Mullvad relay list: the app API (`wireguard`/`openvpn`/`bridge` `.relays[]`) or the
    /// www API (an array of relays).
    Mullvad,
    /// NordVPN server list (`/v1/servers`: an array of servers).
    Nordvpn,
    /// Proton VPN logical servers (`/vpn/logicals`: `LogicalServers[].Servers[]`).
    Proton,
}

impl ImportFormat {
    /// The provider name a converted list is given by default.
    pub fn default_provider(self) -> &'static str {
        match self {
            ImportFormat::TorOnionoo | ImportFormat::TorConsensus => "tor",
            ImportFormat::Mullvad => "mullvad",
            ImportFormat::Nordvpn => "nordvpn",
            ImportFormat::Proton => "proton",
        }
    }
}

/// One address clients connect to, with the scope the source gives for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub scope: Scope,
}

/// What a converter found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Servers (relays) read, including those skipped.
    pub servers: usize,
    /// Servers skipped because the source marks them not running/inactive.
    pub skipped_inactive: usize,
    pub endpoints: BTreeSet<Endpoint>,
}

impl Imported {
    /// The distinct host addresses (scopes dropped).
    pub fn hosts(&self) -> BTreeSet<IpAddr> {
        self.endpoints.iter().map(|e| e.addr).collect()
    }

    /// A plain-text list: a comment header, then one host per line.
    pub fn to_text(&self, what: &str) -> String {
        let hosts = self.hosts();
        let mut out = format!(
            "# {what}: {} servers ({} inactive skipped), {} addresses\n",
            self.servers,
            self.skipped_inactive,
            hosts.len()
        );
        for h in hosts {
            let _ = writeln!(out, "{}", host_prefix(h));
        }
        out
    }

    /// A JSON endpoint feed naming `provider`, one entry per address and scope.
    pub fn to_json(&self, provider: &str, serial: Option<u64>) -> String {
        let entries: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut o = serde_json::Map::new();
                o.insert("provider".into(), provider.into());
                o.insert("prefix".into(), host_prefix(e.addr).to_string().into());
                if e.scope.port != 0 {
                    o.insert("port".into(), e.scope.port.into());
                }
                match e.scope.ip_proto {
                    6 => {
                        o.insert("protocol".into(), "tcp".into());
                    }
                    17 => {
                        o.insert("protocol".into(), "udp".into());
                    }
                    _ => {}
                }
                Value::Object(o)
            })
            .collect();
        let mut doc = serde_json::Map::new();
        if let Some(s) = serial {
            doc.insert("serial".into(), s.into());
        }
        doc.insert("endpoints".into(), Value::Array(entries));
        let mut s = serde_json::to_string_pretty(&Value::Object(doc)).expect("JSON serialises");
        s.push('\n');
        s
    }
}

fn host_prefix(ip: IpAddr) -> Prefix {
    match ip {
        IpAddr::V4(a) => Prefix::V4 {
            addr: a.octets(),
            len: 32,
        },
        IpAddr::V6(a) => Prefix::V6 {
            addr: a.octets(),
            len: 128,
        },
    }
}

/// Converts `bytes` in `format`. Errors name the place (line, or JSON path) and the problem.
pub fn import(format: ImportFormat, bytes: &[u8]) -> Result<Imported, String> {
    match format {
        ImportFormat::TorConsensus => tor_consensus(bytes),
        _ => {
            let doc: Value =
                serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
            match format {
                ImportFormat::TorOnionoo => tor_onionoo(&doc),
                ImportFormat::Mullvad => mullvad(&doc),
                ImportFormat::Nordvpn => nordvpn(&doc),
                ImportFormat::Proton => proton(&doc),
                ImportFormat::TorConsensus => unreachable!("handled above"),
            }
        }
    }
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{at}: expected an array"))
}

fn field<'a>(v: &'a Value, name: &str, at: &str) -> Result<&'a Value, String> {
    v.get(name)
        .ok_or_else(|| format!("{at}: missing \"{name}\""))
}

fn ip(text: &str, at: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{at}: \"{text}\" is not an IP address"))
}

fn finish(out: Imported, what: &str) -> Result<Imported, String> {
    if out.endpoints.is_empty() {
        return Err(format!(
            "{what}: no address found in {} server(s): is this the right format?",
            out.servers
        ));
    }
    Ok(out)
}

/// Onionoo `details`: `{"relays": [{"or_addresses": ["1.2.3.4:9001", "[::1]:9001"],
/// "running": true}]}`. The OR port is the scope (TCP).
fn tor_onionoo(doc: &Value) -> Result<Imported, String> {
    let relays = array(field(doc, "relays", "the document")?, "relays")?;
    let mut out = Imported::default();
    for (i, r) in relays.iter().enumerate() {
        let at = format!("relays[{i}]");
        out.servers += 1;
        if r.get("running").and_then(Value::as_bool) == Some(false) {
            out.skipped_inactive += 1;
            continue;
        }
        let addrs = array(
            field(r, "or_addresses", &at)?,
            &format!("{at}.or_addresses"),
        )?;
        for (j, a) in addrs.iter().enumerate() {
            let aat = format!("{at}.or_addresses[{j}]");
            let text = a
                .as_str()
                .ok_or_else(|| format!("{aat}: expected a string"))?;
            let sa: SocketAddr = text
                .parse()
                .map_err(|_| format!("{aat}: \"{text}\" is not ADDRESS:PORT"))?;
            out.endpoints.insert(Endpoint {
                addr: sa.ip(),
                scope: Scope {
                    ip_proto: 6,
                    port: sa.port(),
                },
            });
        }
    }
    finish(out, "tor-onionoo")
}

/// Consensus: `r NICKNAME IDENTITY DIGEST DATE TIME IPV4 ORPORT DIRPORT` starts a relay, an
/// `a [IPV6]:PORT` line after it adds an address. Other lines are ignored.
fn tor_consensus(bytes: &[u8]) -> Result<Imported, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut out = Imported::default();
    let mut in_relay = false;
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}", i + 1);
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("r") => {
                let w: Vec<&str> = words.collect();
                if w.len() < 8 {
                    return Err(format!(
                        "{at}: an \"r\" line has 8 fields after \"r\" (nickname identity digest date time address orport dirport), found {}",
                        w.len()
                    ));
                }
                let addr = ip(w[5], &format!("{at}, address"))?;
                let port: u16 = w[6]
                    .parse()
                    .map_err(|_| format!("{at}: ORPort \"{}\" is not a port", w[6]))?;
                out.servers += 1;
                in_relay = true;
                out.endpoints.insert(Endpoint {
                    addr,
                    scope: Scope { ip_proto: 6, port },
                });
            }
            Some("a") if in_relay => {
                let text = words.next().unwrap_or("");
                let sa: SocketAddr = text
                    .parse()
                    .map_err(|_| format!("{at}: \"{text}\" is not [ADDRESS]:PORT"))?;
                out.endpoints.insert(Endpoint {
                    addr: sa.ip(),
                    scope: Scope {
                        ip_proto: 6,
                        port: sa.port(),
                    },
                });
            }
            Some("directory-footer") => in_relay = false,
            _ => {}
        }
    }
    finish(out, "tor-consensus")
}

/// Mullvad relays: the app API (an object whose `wireguard`, `openvpn` and `bridge` each hold
/// `relays`) or the www API (an array of relays). Each relay: `ipv4_addr_in`, optional
/// `ipv6_addr_in`, `active`.
fn mullvad(doc: &Value) -> Result<Imported, String> {
    let mut out = Imported::default();
    let mut lists: Vec<(String, &Vec<Value>)> = Vec::new();
    match doc {
        Value::Array(a) => lists.push(("the document".into(), a)),
        Value::Object(o) => {
            for kind in ["wireguard", "openvpn", "bridge"] {
                if let Some(section) = o.get(kind) {
                    let at = format!("{kind}.relays");
                    lists.push((at.clone(), array(field(section, "relays", kind)?, &at)?));
                }
            }
            if lists.is_empty() {
                return Err(
                    "neither a relay array (www API) nor an object with wireguard/openvpn/bridge relays (app API)".into(),
                );
            }
        }
        _ => return Err("expected a relay array or an object".into()),
    }
    for (at, relays) in lists {
        for (i, r) in relays.iter().enumerate() {
            let rat = format!("{at}[{i}]");
            out.servers += 1;
            if r.get("active").and_then(Value::as_bool) == Some(false) {
                out.skipped_inactive += 1;
                continue;
            }
            let v4 = field(r, "ipv4_addr_in", &rat)?
                .as_str()
                .ok_or_else(|| format!("{rat}.ipv4_addr_in: expected a string"))?;
            out.endpoints.insert(Endpoint {
                addr: ip(v4, &format!("{rat}.ipv4_addr_in"))?,
                scope: Scope::default(),
            });
            if let Some(v6) = r.get("ipv6_addr_in").and_then(Value::as_str) {
                if !v6.is_empty() {
                    out.endpoints.insert(Endpoint {
                        addr: ip(v6, &format!("{rat}.ipv6_addr_in"))?,
                        scope: Scope::default(),
                    });
                }
            }
        }
    }
    finish(out, "mullvad")
}

/// NordVPN `/v1/servers`: an array of servers with `station` (IPv4), optional
/// `ipv6_station`, `ips[].ip.ip` and `status` (`online`, ...).
fn nordvpn(doc: &Value) -> Result<Imported, String> {
    let servers = array(doc, "the document")?;
    let mut out = Imported::default();
    for (i, s) in servers.iter().enumerate() {
        let at = format!("[{i}]");
        out.servers += 1;
        if s.get("status")
            .and_then(Value::as_str)
            .is_some_and(|st| st != "online")
        {
            out.skipped_inactive += 1;
            continue;
        }
        let mut found = false;
        for key in ["station", "ipv6_station"] {
            if let Some(t) = s.get(key).and_then(Value::as_str) {
                if !t.is_empty() {
                    out.endpoints.insert(Endpoint {
                        addr: ip(t, &format!("{at}.{key}"))?,
                        scope: Scope::default(),
                    });
                    found = true;
                }
            }
        }
        if let Some(ips) = s.get("ips").and_then(Value::as_array) {
            for (j, e) in ips.iter().enumerate() {
                let eat = format!("{at}.ips[{j}].ip.ip");
                let t = e
                    .get("ip")
                    .and_then(|i| i.get("ip"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{eat}: missing"))?;
                out.endpoints.insert(Endpoint {
                    addr: ip(t, &eat)?,
                    scope: Scope::default(),
                });
                found = true;
            }
        }
        if !found {
            return Err(format!("{at}: no \"station\" or \"ips\" address"));
        }
    }
    finish(out, "nordvpn")
}

/// Proton `/vpn/logicals`: `{"LogicalServers": [{"Status": 1, "Servers": [{"EntryIP":
/// "...", "Status": 1}]}]}`.
fn proton(doc: &Value) -> Result<Imported, String> {
    let logicals = array(
        field(doc, "LogicalServers", "the document")?,
        "LogicalServers",
    )?;
    let mut out = Imported::default();
    for (i, l) in logicals.iter().enumerate() {
        let at = format!("LogicalServers[{i}]");
        let servers = array(field(l, "Servers", &at)?, &format!("{at}.Servers"))?;
        for (j, s) in servers.iter().enumerate() {
            let sat = format!("{at}.Servers[{j}]");
            out.servers += 1;
            if s.get("Status").and_then(Value::as_u64) == Some(0) {
                out.skipped_inactive += 1;
                continue;
            }
            let t = field(s, "EntryIP", &sat)?
                .as_str()
                .ok_or_else(|| format!("{sat}.EntryIP: expected a string"))?;
            out.endpoints.insert(Endpoint {
                addr: ip(t, &format!("{sat}.EntryIP"))?,
                scope: Scope::default(),
            });
        }
    }
    finish(out, "proton")
}
