//! Mounting, shared by stage 1, stage 2 and the activation engine: fstab-style option
//! parsing, the kernel's mount table, and the one table of special filesystems NixOS
//! sets up (`boot.specialFileSystems`), so the three programs cannot drift apart.

pub mod mountinfo;
pub mod options;
pub mod special;
