//! Stagehand activation: turns a NixOS-style system generation into a running configuration.
pub mod cli;
pub mod crypt;
pub mod etc;
pub mod rootfs;
pub mod users;
