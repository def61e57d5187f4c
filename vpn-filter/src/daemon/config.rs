//! `--config FILE`: a TOML file for everything `vpn-filter run`'s flags set.
//!
//! Keys are the long flag names (`allow-v4-entries = 2000000`); `interfaces` lists the
//! interfaces; `[policy]` is a table of protocol = mode. Flags given on the command line
//! override the file. Every problem names the key: an unknown key, a value of the wrong type,
//! a policy entry that names no protocol. On SIGHUP the file is read again and the new
//! settings apply only if all of them are valid; otherwise the old ones stay in force.

use std::{collections::BTreeSet, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{parser::ValueSource, ArgMatches};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// Config keys whose clap argument id differs from the key with dashes turned into
/// underscores.
const KEY_TO_ARG: &[(&str, &str)] = &[("interfaces", "ifaces")];

fn arg_id(key: &str) -> String {
    KEY_TO_ARG
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| key.replace('-', "_"))
}

/// Reads `file` and merges it under the command line: a key from the file is used unless
/// the same setting was given as a flag. `cli` must serialise to a flat JSON object whose keys
/// are the config keys.
pub fn merge<T: Serialize + DeserializeOwned>(
    cli: &T,
    matches: &ArgMatches,
    file: &Path,
) -> Result<T> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading config {}", file.display()))?;
    merge_str(cli, matches, &text, &file.display().to_string())
}

/// [`merge`] on the file's text; `name` names it in errors.
pub fn merge_str<T: Serialize + DeserializeOwned>(
    cli: &T,
    matches: &ArgMatches,
    text: &str,
    name: &str,
) -> Result<T> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow!("{name}: {e}"))?;
    let mut merged = serde_json::to_value(cli).context("serialising the command line")?;
    let obj = merged
        .as_object_mut()
        .ok_or_else(|| anyhow!("settings are not a table"))?;
    let known: BTreeSet<String> = obj.keys().cloned().collect();
    for (key, value) in table {
        if !known.contains(&key) {
            bail!(
                "{name}: unknown key `{key}` (known keys: {})",
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let from_cli = matches!(
            matches.value_source(&arg_id(&key)),
            Some(ValueSource::CommandLine)
        );
        if from_cli {
            continue;
        }
        let value = to_json(&key, value).map_err(|e| anyhow!("{name}: key `{key}`: {e}"))?;
        // Check this key alone first, so a type error names it.
        let mut probe = serde_json::to_value(cli)?;
        probe[&key] = value.clone();
        if let Err(e) = serde_json::from_value::<T>(probe) {
            bail!("{name}: key `{key}`: {e}");
        }
        obj.insert(key, value);
    }
    serde_json::from_value(merged).map_err(|e| anyhow!("{name}: {e}"))
}

/// TOML to JSON, with the `[policy]` table turned into the `PROTOCOL=MODE` list the flag
/// takes.
fn to_json(key: &str, value: toml::Value) -> Result<Value> {
    if key == "policy" {
        if let toml::Value::Table(t) = value {
            let mut list = Vec::new();
            for (proto, mode) in t {
                let mode = mode.as_str().ok_or_else(|| {
                    anyhow!("`{proto}` must be a string: enforce, monitor or off")
                })?;
                list.push(Value::String(format!("{proto}={mode}")));
            }
            return Ok(Value::Array(list));
        }
    }
    serde_json::to_value(value).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Parser, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Args {
        #[arg(long = "iface")]
        #[serde(rename = "interfaces")]
        ifaces: Vec<String>,
        #[arg(long, default_value_t = 10)]
        flow_entries: u32,
        #[arg(long)]
        policy: Vec<String>,
    }

    fn parse(argv: &[&str], toml: &str) -> Result<Args> {
        let matches = Args::command().try_get_matches_from(argv).unwrap();
        let cli = Args::from_arg_matches(&matches).unwrap();
        merge_str(&cli, &matches, toml, "test.toml")
    }

    #[test]
    fn file_values_fill_what_the_command_line_did_not_set() {
        let a = parse(
            &["x"],
            "interfaces = [\"eth0\"]\nflow-entries = 99\n[policy]\nopenvpn = \"monitor\"\n",
        )
        .unwrap();
        assert_eq!(a.ifaces, vec!["eth0"]);
        assert_eq!(a.flow_entries, 99);
        assert_eq!(a.policy, vec!["openvpn=monitor"]);
    }

    #[test]
    fn command_line_flags_override_the_file() {
        let a = parse(
            &["x", "--flow-entries", "5", "--iface", "eth9"],
            "interfaces = [\"eth0\"]\nflow-entries = 99\n",
        )
        .unwrap();
        assert_eq!(a.flow_entries, 5);
        assert_eq!(a.ifaces, vec!["eth9"]);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&["x"], "flow-entrie = 3\n").unwrap_err().to_string();
        assert!(e.contains("unknown key `flow-entrie`"), "{e}");
        let e = parse(&["x"], "flow-entries = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `flow-entries`"), "{e}");
        let e = parse(&["x"], "[policy]\nwireguard = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `policy`") && e.contains("wireguard"), "{e}");
        let e = parse(&["x"], "flow-entries = \n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }
}
