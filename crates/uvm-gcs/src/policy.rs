//! The security policy `Exec` enforces.

use std::collections::HashSet;
use std::path::Path;

use uvm_proto::gcs::{security_policy, SecurityPolicy};

/// What may run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Policy {
    /// Everything (the default).
    #[default]
    AllowAll,
    /// Only these commands; each is compared with the resolved path and with `args[0]`.
    AllowList(HashSet<String>),
}

impl Policy {
    /// Whether a process whose `args[0]` resolved to `path` may run.
    pub fn allows(&self, path: &Path, arg0: &str) -> bool {
        match self {
            Policy::AllowAll => true,
            Policy::AllowList(list) => {
                list.contains(arg0) || path.to_str().is_some_and(|p| list.contains(p))
            }
        }
    }
}

impl From<SecurityPolicy> for Policy {
    fn from(p: SecurityPolicy) -> Self {
        match p.policy {
            None | Some(security_policy::Policy::AllowAll(_)) => Policy::AllowAll,
            Some(security_policy::Policy::ExecAllowList(l)) => {
                Policy::AllowList(l.commands.into_iter().collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uvm_proto::gcs::ExecAllowList;

    #[test]
    fn allow_list_matches_path_or_arg0() {
        let p = Policy::from(SecurityPolicy {
            policy: Some(security_policy::Policy::ExecAllowList(ExecAllowList {
                commands: vec!["/bin/true".into(), "echo".into()],
            })),
        });
        assert!(p.allows(Path::new("/bin/true"), "true"));
        assert!(p.allows(Path::new("/usr/bin/echo"), "echo"));
        assert!(!p.allows(Path::new("/bin/sh"), "sh"));
        assert!(Policy::from(SecurityPolicy { policy: None }).allows(Path::new("/bin/sh"), "sh"));
    }
}
