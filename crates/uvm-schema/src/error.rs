//! Errors and warnings of parsing and validating a document.

use std::fmt;

/// Why a document was refused. `Display` is `<JSON path>: <reason>`, e.g.
/// `VirtualMachine.ComputeTopology.Memory.SizeInMB: must be >= 64`.
///
/// For file errors the underlying I/O error is the [`source`](std::error::Error::source)
/// (printed by error-chain reporters), not part of the message.
#[derive(Debug)]
pub struct SchemaError {
    /// JSON path of the offending field (`.`-separated, map keys and array
    /// indices as segments); `<document>` for the whole document.
    pub path: String,
    /// What is wrong with it.
    pub kind: SchemaErrorKind,
}

/// The reason part of a [`SchemaError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// The JSON is malformed or a value has the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A field this schema does not know.
    #[error("unknown field")]
    UnknownField,
    /// A known field whose meaning this implementation cannot honour.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A value outside its allowed range or form.
    #[error("{0}")]
    Invalid(String),
    /// A required field is missing or empty.
    #[error("required")]
    Missing,
    /// A path the document names cannot be used (the I/O error is the source).
    #[error("{what} {path} cannot be used")]
    File {
        /// What the path is (kernel, initrd, disk, ...).
        what: &'static str,
        /// The path as written in the document.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind)
    }
}

impl std::error::Error for SchemaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            SchemaErrorKind::File { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl SchemaError {
    pub(crate) fn new(path: impl Into<String>, kind: SchemaErrorKind) -> Self {
        SchemaError {
            path: path.into(),
            kind,
        }
    }
    pub(crate) fn invalid(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(path, SchemaErrorKind::Invalid(msg.into()))
    }
}

/// A field that was accepted but has no effect on this platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// JSON path of the field.
    pub path: String,
    /// Why it has no effect.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
