# Evaluates nix/module.nix with small stand-ins for nixpkgs' `lib` and `pkgs`, which the
# Nix on the test machine (2.8) cannot evaluate. It checks the module's own logic — the
# scripts and values it produces from a configuration — not nixpkgs' option types or
# merging. Each `mk*` keeps what it wraps visible, so the test sees priorities and
# conditions. cli/tests/nix_files.rs runs it:
#   nix-instantiate --eval --strict --json --expr 'import ./module-stub.nix { }'
{
  replaceInit ? true,
  systemdInitrd ? false,
  secrets ? {
    "/etc/ssh/ssh_host_ed25519_key" = null;
    "/etc/secret key" = "/root/it's secret";
  },
  luksDevices ? { },
  rootDevice ? "/dev/disk/by-label/nixos",
  swraid ? false,
  mdadmConf ? "",
}:
let
  lib = rec {
    mkOption = o: o;
    mkEnableOption = what: {
      type = "bool";
      default = false;
      description = "Whether to enable ${what}.";
    };
    types = {
      package = "package";
      bool = "bool";
      str = "str";
      listOf = t: "listOf ${t}";
    };
    literalExpression = text: { inherit text; };
    mkIf = condition: content: { inherit condition content; };
    mkDefault = content: {
      priority = 1000;
      inherit content;
    };
    mkForce = content: {
      priority = 50;
      inherit content;
    };
    optionalString = c: s: if c then s else "";
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    escapeShellArgs = l: builtins.concatStringsSep " " (map escapeShellArg l);
    concatStringsSep = builtins.concatStringsSep;
    unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    subtractLists = e: builtins.filter (x: !(builtins.elem x e));
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (builtins.attrNames attrs);
    attrValues = attrs: map (n: attrs.${n}) (builtins.attrNames attrs);
    filter = builtins.filter;
    any = builtins.any;
    concatMap = builtins.concatMap;
  };

  drv = name: text: {
    inherit name text;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs = {
    runCommand = name: attrs: text: drv name text // { inherit attrs; };
    writeShellScriptBin = name: text: drv name text;
    writeText = name: text: drv name text;
    callPackage = _: _: drv "stagehand-default" "";
  };

  config = {
    boot.stagehand = {
      enable = true;
      package = drv "stagehand-0.1.0" "";
      extraModules = [
        "virtio_net"
        "ahci"
      ];
      inherit replaceInit;
      # As the module system would: the option's default, computed from this config.
      lvm = m.options.boot.stagehand.lvm.default;
    };
    boot.initrd = {
      enable = true;
      systemd.enable = systemdInitrd;
      availableKernelModules = [
        "ahci"
        "sd_mod"
      ];
      kernelModules = [ "dm_mod" ];
      inherit secrets;
      # NixOS's submodule gives every device its attribute name as `name`.
      luks = {
        reusePassphrases = true;
        devices = builtins.mapAttrs (name: d: { inherit name; } // d) luksDevices;
      };
    };
    boot.swraid = {
      enable = swraid;
      inherit mdadmConf;
    };
    fileSystems = {
      "/" = {
        device = rootDevice;
        fsType = "ext4";
      };
      "/tmp" = {
        device = null;
        fsType = "tmpfs";
      };
    };
    boot.isContainer = false;
    boot.kernelPackages.kernel.modDirVersion = "6.6.7";
    system.boot.loader.initrdFile = "initrd";
    environment.etc.fstab.source = drv "etc-fstab" "";
    system.modulesTree = drv "linux-6.6.7-modules" "";
    hardware.firmware = drv "firmware" "";
  };

  m = import ../../../nix/module.nix {
    inherit config lib pkgs;
  };
  c = m.config.content;
  initrd = c.system.build.initialRamdisk.content;
in
{
  options = builtins.attrNames m.options.boot.stagehand;
  enabledBy = m.config.condition;
  assertions = map (a: a.assertion) c.assertions;
  systemdInitrd = c.boot.initrd.systemd.enable;
  initrdName = initrd.name;
  initrdPath = "${initrd}";
  initrdTools = map (p: p.name) initrd.attrs.nativeBuildInputs;
  initrdScript = initrd.text;
  inputsScript = initrd.attrs.passthru.systemInputs.text;
  stage1OptionsName = initrd.attrs.passthru.stage1OptionsFile.name;
  stage1Options = builtins.fromJSON initrd.attrs.passthru.stage1OptionsFile.text;
  assertionMessages = map (a: a.message) c.assertions;
  appenderPriority = c.system.build.initialRamdiskSecretAppender.priority;
  appender = c.system.build.initialRamdiskSecretAppender.content.text;
  bootspec = c.boot.bootspec.extensions;
  builderCommands = c.system.systemBuilderCommands;
  packages = map (p: p.name) c.environment.systemPackages;
}
