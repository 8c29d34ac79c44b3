//! ampere server library.
