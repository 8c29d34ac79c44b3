//! The HTTP API (protocol.md).
