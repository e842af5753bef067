# The Stagehand binaries, built from this repository: `stagehand` (the CLI),
# `stagehand-initrd` (the initrd builder), `stage1` (the initrd's /init) and `stage2`
# (PID 1 on the real root). Linked statically against glibc, as the README's build does:
# stage 1 runs before any dynamic loader exists, stage 2 before /nix/store is trusted.
{
  lib,
  rustPlatform,
  glibc,
}:

let
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "stagehand";
  inherit (workspace.workspace.package) version;

  # Every workspace member (cargo needs them all to load the workspace), nothing else.
  # `.cargo/` is left out on purpose: nixpkgs' cargo setup writes its own configuration for
  # the same target (linker, `-crt-static`), and the static flag is set below instead.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../common
      ../stage1
      ../stage2
      ../activation
      ../boot
      ../switch
      ../cli
      ../testkit
      ../initrd
      ../vm-tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Only the four binaries a system needs; not the VM-test harness.
  cargoBuildFlags = [
    "--package=stagehand-cli"
    "--package=stagehand-initrd"
    "--package=stagehand-stage1"
    "--package=stagehand-stage2"
  ];

  # .cargo/config.toml's flag. buildRustPackage passes `--target`, so RUSTFLAGS reaches the
  # binaries only, never build scripts or proc-macros (which cannot be static).
  env.RUSTFLAGS = "-C target-feature=+crt-static";
  buildInputs = [ glibc.static ];

  # The tests need QEMU, strace, mkfs tools and root (see vm-tests/setup-host); they run
  # with `cargo test` outside the Nix sandbox.
  doCheck = false;

  meta = {
    description = "Boot and activation for NixOS-style systems, in Rust";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "stagehand";
    platforms = [ "x86_64-linux" ];
  };
}
