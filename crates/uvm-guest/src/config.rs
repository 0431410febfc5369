//! Options applied to the guest at start: initial state and security policy.

use uvm_proto::gcs;

/// One guest configuration option applied during the `Negotiate` handshake
/// (hcsshim's `guestmanager.ConfigOption`). Options are applied in order; a
/// later one overrides an earlier one for the same setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOption {
    /// Replace the whole initial state (hcsshim `WithInitializationState`).
    InitializationState(InitialState),
    /// Guest hostname (default: the VM id).
    Hostname(String),
    /// IANA time zone exported as `TZ` (default: UTC).
    Timezone(String),
    /// One `KEY=VALUE` added to every guest process's environment.
    Env(String, String),
}

/// The guest's initial state (mirrors `gcs.InitialState`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitialState {
    /// Hostname; empty keeps the agent's default.
    pub hostname: String,
    /// Time zone; empty = UTC.
    pub timezone: String,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
}

impl ConfigOption {
    /// Sets the whole initial state.
    pub fn with_initialization_state(state: InitialState) -> Self {
        ConfigOption::InitializationState(state)
    }
    /// Sets the hostname.
    pub fn with_hostname(name: impl Into<String>) -> Self {
        ConfigOption::Hostname(name.into())
    }
    /// Sets the time zone.
    pub fn with_timezone(tz: impl Into<String>) -> Self {
        ConfigOption::Timezone(tz.into())
    }
    /// Adds an environment variable.
    pub fn with_env(key: impl Into<String>, value: impl Into<String>) -> Self {
        ConfigOption::Env(key.into(), value.into())
    }
}

/// Folds options into the `InitialState` message sent with `Negotiate`.
pub fn initial_state(options: &[ConfigOption]) -> gcs::InitialState {
    let mut st = InitialState::default();
    for opt in options {
        match opt {
            ConfigOption::InitializationState(s) => st = s.clone(),
            ConfigOption::Hostname(h) => st.hostname = h.clone(),
            ConfigOption::Timezone(t) => st.timezone = t.clone(),
            ConfigOption::Env(k, v) => st.env.push(format!("{k}={v}")),
        }
    }
    gcs::InitialState {
        hostname: st.hostname,
        timezone: st.timezone,
        env: st.env,
    }
}

/// The policy the agent enforces once set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Everything is allowed (the agent's default).
    #[default]
    AllowAll,
    /// Only these executables may be run (compared with args[0] and its resolved path).
    ExecAllowList(Vec<String>),
}

impl SecurityPolicy {
    /// The wire message.
    pub fn to_proto(&self) -> gcs::SecurityPolicy {
        use gcs::security_policy::Policy;
        let policy = match self {
            SecurityPolicy::AllowAll => Policy::AllowAll(gcs::AllowAll {}),
            SecurityPolicy::ExecAllowList(c) => Policy::ExecAllowList(gcs::ExecAllowList {
                commands: c.clone(),
            }),
        };
        gcs::SecurityPolicy {
            policy: Some(policy),
        }
    }
}

/// Confidential-computing options applied at start (hcsshim's
/// `guestresource.ConfidentialOptions`): today, the security policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfidentialOptions {
    /// Policy installed through `SetSecurityPolicy`.
    pub security_policy: SecurityPolicy,
}

/// How the guest should shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Sync and power off.
    PowerOff,
    /// Sync and reboot.
    Reboot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fold_in_order() {
        let st = initial_state(&[
            ConfigOption::with_hostname("a"),
            ConfigOption::with_env("K", "V"),
            ConfigOption::with_initialization_state(InitialState {
                hostname: "b".into(),
                ..Default::default()
            }),
            ConfigOption::with_timezone("Europe/Paris"),
            ConfigOption::with_env("X", "1"),
        ]);
        assert_eq!(st.hostname, "b");
        assert_eq!(st.timezone, "Europe/Paris");
        assert_eq!(st.env, vec!["X=1".to_string()]);
    }

    #[test]
    fn policy_to_proto() {
        let p = SecurityPolicy::ExecAllowList(vec!["/bin/true".into()]).to_proto();
        assert!(matches!(
            p.policy,
            Some(gcs::security_policy::Policy::ExecAllowList(ref l)) if l.commands == ["/bin/true"]
        ));
    }
}
