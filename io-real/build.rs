//! Declares the `ampere_loom` cfg (set by `scripts/loom.sh`) so `unexpected_cfgs` stays quiet:
//! the crate takes its lints from the workspace (`[lints] workspace = true`), which cannot be
//! combined with a crate-level `[lints.rust]` entry naming the cfg.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ampere_loom)");
    println!("cargo::rerun-if-changed=build.rs");
}
