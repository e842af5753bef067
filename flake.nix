# Stagehand as a flake: the package (stagehand, stagehand-initrd, stage1, stage2) and the
# NixOS module that boots a system through them. What is and is not verified: nix/README.md.
{
  description = "Stagehand: boot and activation for NixOS, in Rust, without a shell in the boot path";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # The only target the workspace is built for (.cargo/config.toml).
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
    in
    {
      packages.${system} = {
        stagehand = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${system}.stagehand;
      };

      # The module defaults `boot.stagehand.package` to this flake's package.
      nixosModules.default = {
        imports = [ ./nix/module.nix ];
        boot.stagehand.package = nixpkgs.lib.mkDefault self.packages.${system}.stagehand;
      };
    };
}
