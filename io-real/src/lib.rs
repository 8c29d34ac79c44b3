//! ampere's real adapters for the core's ports.

pub mod catalog;
pub mod clock;
pub mod embedded_pg;
pub mod inspect;
pub mod lease;
mod membership;
pub mod metadata;
mod parallel;
pub mod pg;
pub mod pool;
mod publication;
pub mod replication;
pub mod snapshot;
pub mod standby_metadata;
pub mod store;
pub mod tcp;
pub mod tls;
pub mod watermark;

impl ampere_core::ports::StorageError for store::StoreError {
    fn is_fenced(&self) -> bool {
        Self::is_fenced(self)
    }

    fn fault(&self) -> Option<ampere_core::ports::StorageFault> {
        Self::fault(self)
    }
}

impl ampere_core::ports::StorageError for metadata::MetadataError {
    fn is_fenced(&self) -> bool {
        Self::is_fenced(self)
    }

    fn fault(&self) -> Option<ampere_core::ports::StorageFault> {
        Self::fault(self)
    }
}
