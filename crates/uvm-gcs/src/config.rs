//! Agent settings from the kernel command line (`uvm.*` keys).

use uvm_proto::{cmdline, ports};

/// Guest platform flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Linux containers host: entropy + log channels.
    Lcow,
    /// Windows-style host: no entropy channel.
    Wcow,
}

/// Settings read from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// VM id (`uvm.id`); the default hostname.
    pub id: Option<String>,
    /// Name of the GCS port (`uvm.gcs_port`).
    pub gcs_port: String,
    /// Log level (`uvm.log_level`).
    pub log_level: String,
    /// Platform (`uvm.platform`).
    pub platform: Platform,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: None,
            gcs_port: ports::GCS.to_owned(),
            log_level: "info".to_owned(),
            platform: Platform::Lcow,
        }
    }
}

impl Config {
    /// Parses a kernel command line; unknown keys are ignored, bad values keep defaults.
    pub fn parse(line: &str) -> Self {
        let mut cfg = Self::default();
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = value.trim_matches('"');
            match key {
                cmdline::ID if !value.is_empty() => cfg.id = Some(value.to_owned()),
                cmdline::GCS_PORT if !value.is_empty() => cfg.gcs_port = value.to_ascii_lowercase(),
                cmdline::LOG_LEVEL if !value.is_empty() => {
                    cfg.log_level = value.to_ascii_lowercase()
                }
                cmdline::PLATFORM => match value.to_ascii_lowercase().as_str() {
                    "wcow" => cfg.platform = Platform::Wcow,
                    _ => cfg.platform = Platform::Lcow,
                },
                _ => {}
            }
        }
        cfg
    }

    /// Reads `/proc/cmdline` (defaults when unreadable).
    pub fn from_proc() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uvm_keys_and_ignores_others() {
        let c = Config::parse(
            "console=ttyS0 uvm.id=vm1 uvm.log_level=DEBUG uvm.platform=wcow uvm.gcs_port=ABC quiet",
        );
        assert_eq!(c.id.as_deref(), Some("vm1"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.platform, Platform::Wcow);
        assert_eq!(c.gcs_port, "abc");
        assert_eq!(Config::parse("quiet"), Config::default());
    }
}
