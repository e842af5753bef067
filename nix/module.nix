# Stagehand's NixOS module: `boot.stagehand.enable = true` makes every boot loader boot
# Stagehand's initrd (stage 1) and, by default, makes Stagehand's stage 2 the generation's
# `init`. It stays thin on purpose: what goes into the initrd, which filesystems stage 1
# mounts and how is decided by `stagehand-initrd build --system`, tested in the Rust
# workspace; this file only hands it the configuration's pieces.
#
# Option names and how nixpkgs wires them were checked against nixpkgs' sources; the list,
# and what has and has not been verified, is in nix/README.md.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.boot.stagehand;
  initrdFile = config.system.boot.loader.initrdFile;

  # What `--system` reads from a toplevel (etc/fstab, kernel-modules, firmware), under the
  # same names, gathered without the toplevel: the toplevel links the initrd, so building
  # the initrd from the toplevel would be a cycle. Only the fstab is taken from /etc, so
  # that the initrd is not rebuilt whenever any other file in /etc changes.
  systemInputs = pkgs.runCommand "stagehand-initrd-inputs" { } ''
    mkdir -p $out/etc
    ln -s ${config.environment.etc.fstab.source} $out/etc/fstab
    ln -s ${config.system.modulesTree} $out/kernel-modules
    ln -s ${config.hardware.firmware}/lib/firmware $out/firmware
  '';

  # kernelModules are loaded whatever the machine; availableKernelModules only help when
  # their hardware is there, so they are carried as optional (a failed load does not stop
  # the boot), as NixOS's stage 1 treats them.
  modules = lib.unique (config.boot.initrd.kernelModules ++ cfg.extraModules);
  optionalModules = lib.subtractLists modules (lib.unique config.boot.initrd.availableKernelModules);

  # The storage layers stage 1 sets up before it looks for the filesystems, from NixOS's own
  # options (its scripted initrd keeps them in its init script, not in the toplevel, so
  # `--system` cannot read them there): `stagehand-initrd build --stage1-options`.
  luks = config.boot.initrd.luks;
  luksDevices = lib.attrValues luks.devices;
  stage1Options = {
    luks = map (d: {
      inherit (d) name device header;
      key_file = d.keyFile;
      key_file_size = d.keyFileSize;
      key_file_offset = d.keyFileOffset;
      allow_discards = d.allowDiscards;
      bypass_workqueues = d.bypassWorkqueues;
      pre_lvm = d.preLVM;
      fallback_to_password = d.fallbackToPassword;
    }) luksDevices;
    reuse_passphrases = luks.reusePassphrases;
    inherit (cfg) lvm;
    swraid = config.boot.swraid.enable or false;
    md_arrays = mdArrays;
    check_journaling_fs = config.boot.initrd.checkJournalingFS or true;
    resume_device =
      let
        d = config.boot.resumeDevice or "";
      in
      if d == "" then null else d;
  };
  # The arrays `boot.swraid.mdadmConf` names (`ARRAY … UUID=…` lines): stage 1 waits for
  # their members and starts them; with `swraid` it also assembles any other it finds.
  mdadmLines = builtins.filter builtins.isString (
    builtins.split "\n" (config.boot.swraid.mdadmConf or "")
  );
  mdArrays = map (l: {
    uuid = builtins.head (builtins.match "ARRAY[[:space:]].*UUID=([0-9A-Fa-f:-]+).*" l);
  }) (builtins.filter (l: builtins.match "ARRAY[[:space:]].*UUID=[0-9A-Fa-f:-]+.*" l != null) mdadmLines);
  stage1OptionsFile = pkgs.writeText "stagehand-stage1-options.json" (builtins.toJSON stage1Options);

  # A filesystem on an LVM volume: `/dev/mapper/VG-LV` that is not a LUKS device, or
  # `/dev/VG/LV` outside udev's and md's directories. LUKS on LVM (preLVM = false) needs
  # LVM too.
  isLvmDevice =
    d:
    let
      mapped = builtins.match "/dev/mapper/(.+)" d;
      twoLevel = builtins.match "/dev/([^/]+)/[^/]+" d;
    in
    (mapped != null && !(luks.devices ? ${builtins.head mapped}))
    || (twoLevel != null && !(builtins.elem (builtins.head twoLevel) [ "disk" "mapper" "md" ]));
  fileSystemDevices = lib.filter builtins.isString (
    map (fs: fs.device or null) (lib.attrValues config.fileSystems)
  );
  lvmNeeded =
    lib.any (d: !d.preLVM) luksDevices || lib.any isLvmDevice fileSystemDevices;

  # What `boot.initrd.luks.devices` can ask for and stage 1 does not do: refused at
  # evaluation, naming the device and the option, rather than failing at boot.
  luksAssertions = lib.concatMap (d: [
    {
      assertion = (d.yubikey or null) == null && (d.gpgCard or null) == null
        && (d.fido2.credential or null) == null && (d.fido2.credentials or [ ]) == [ ];
      message = "boot.stagehand: boot.initrd.luks.devices.${d.name} uses a YubiKey, GPG card or FIDO2 token, which Stagehand's stage 1 does not support; unlock it with a passphrase or a key file.";
    }
    {
      assertion = (d.preOpenCommands or "") == "" && (d.postOpenCommands or "") == "";
      message = "boot.stagehand: boot.initrd.luks.devices.${d.name}.preOpenCommands/postOpenCommands are shell, which Stagehand's stage 1 does not run.";
    }
    {
      assertion = d.keyFile == null || config.boot.initrd.secrets ? ${d.keyFile};
      message = "boot.stagehand: boot.initrd.luks.devices.${d.name}.keyFile (${toString d.keyFile}) must be one of boot.initrd.secrets: Stagehand's stage 1 reads key files from the initrd secrets only (not from a device).";
    }
    {
      assertion = !(d.tryEmptyPassphrase or false) && (d.keyFileTimeout or null) == null;
      message = "boot.stagehand: boot.initrd.luks.devices.${d.name}.tryEmptyPassphrase and keyFileTimeout are not supported by Stagehand's stage 1.";
    }
  ]) luksDevices;

  initrd =
    pkgs.runCommand "stagehand-initrd-${config.boot.kernelPackages.kernel.modDirVersion}"
      {
        nativeBuildInputs = [ cfg.package ];
        # To look at what the initrd was built from (and for the module's test).
        passthru = { inherit systemInputs stage1OptionsFile; };
      }
      ''
        mkdir $out
        stagehand-initrd build \
          --system ${systemInputs} \
          --generic \
          ${lib.optionalString (modules != [ ]) "--modules ${lib.escapeShellArg (lib.concatStringsSep "," modules)}"} \
          ${lib.optionalString (optionalModules != [ ]) "--optional-modules ${lib.escapeShellArg (lib.concatStringsSep "," optionalModules)}"} \
          --stage1-options ${stage1OptionsFile} \
          --stage1 ${cfg.package}/bin/stage1 \
          --stage2 ${cfg.package}/bin/stage2 \
          -o $out/${initrdFile}
      '';

  # NixOS's boot loaders run `append-initrd-secrets COPY_OF_THE_INITRD` at install time;
  # this one appends `boot.initrd.secrets` the way stage 1 reads them (/.initrd-secrets/).
  # A null source means the same path outside, as in NixOS. `toString` keeps the secrets'
  # paths out of the store.
  secrets = lib.mapAttrsToList (
    dest: source: "${dest}=${toString (if source == null then dest else source)}"
  ) config.boot.initrd.secrets;
  secretsAppender = pkgs.writeShellScriptBin "append-initrd-secrets" ''
    if [ "$#" -ne 1 ]; then
      echo "usage: $0 INITRD_FILE (appends this configuration's boot.initrd.secrets)" >&2
      exit 1
    fi
    ${
      if secrets == [ ] then
        "exit 0"
      else
        ''exec ${cfg.package}/bin/stagehand-initrd append-secrets "$1" ${lib.escapeShellArgs secrets}''
    }
  '';
in
{
  options.boot.stagehand = {
    enable = lib.mkEnableOption "booting through Stagehand's initrd (stage 1) and stage 2";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The Stagehand package: stagehand, stagehand-initrd, stage1 and stage2.";
    };

    extraModules = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "virtio_net" ];
      description = ''
        Kernel modules stage 1 loads besides boot.initrd.availableKernelModules,
        boot.initrd.kernelModules and the generic disk and keyboard drivers.
      '';
    };

    lvm = lib.mkOption {
      type = lib.types.bool;
      default = lvmNeeded;
      defaultText = lib.literalExpression "true when a LUKS device has preLVM = false or a fileSystems device is an LVM volume (/dev/mapper/VG-LV that is no LUKS device, /dev/VG/LV)";
      description = ''
        Let stage 1 activate the LVM volume groups it finds before it looks for the
        filesystems (NixOS's scripted stage 1 always runs `vgchange -ay`; Stagehand's does
        it when asked, natively, without lvm2 in the initrd).
      '';
    };

    replaceInit = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Make Stagehand's stage 2 the generation's `init`. NixOS's stage-2 script stays in the
        generation as `nixos-stage-2-init` (boot it with
        `init=<toplevel>/nixos-stage-2-init stagehand.init=generation`). When false, `init`
        stays NixOS's script; Stagehand's stage 1 still runs the stage 2 it carries for a
        generation without activation.json, and `stagehand.init=generation` on the kernel
        command line runs NixOS's script.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = luksAssertions ++ [
      {
        assertion = !config.boot.initrd.systemd.enable;
        message = ''
          boot.stagehand replaces the initrd with Stagehand's, whose stage 1 is not systemd:
          set boot.initrd.systemd.enable = false.
        '';
      }
      {
        assertion = config.boot.initrd.enable && !config.boot.isContainer;
        message = "boot.stagehand needs an initrd (boot.initrd.enable) and a machine that boots (not a container).";
      }
    ];

    # Stagehand's stage 1 takes the place of systemd in the initrd; NixOS's default may be
    # the systemd initrd, so the scripted layout (`init` = the stage-2 script) is asked for.
    # An explicit `true` still wins, and the assertion above names it.
    boot.initrd.systemd.enable = lib.mkDefault false;

    # Every boot loader (systemd-boot, GRUB, extlinux, and bootspec's `initrd`) boots this.
    system.build.initialRamdisk = lib.mkForce initrd;
    system.build.initialRamdiskSecretAppender = lib.mkForce secretsAppender;

    # Read by `stagehand install-bootloader` (boot/README.md, "Which initrd an entry boots").
    boot.bootspec.extensions."dev.stagehand.v1".initrd = "${initrd}/${initrdFile}";

    # top-level.nix copies system.build.bootStage2 to $out/init and runs substituteInPlace on
    # it, which refuses a file with NUL bytes (any ELF binary): bootStage2 cannot be our
    # stage 2. The builder's commands run after that copy, so the swap happens there.
    system.systemBuilderCommands = lib.mkIf cfg.replaceInit ''
      mv $out/init $out/nixos-stage-2-init
      cp ${cfg.package}/bin/stage2 $out/init
    '';

    environment.systemPackages = [ cfg.package ];
  };
}
