//! The text of the scripts a NixOS toplevel carries, in the layout nixpkgs generates them, for
//! tests that must read what a real NixOS system has on disk (the activation crate's reader
//! of `<toplevel>/activate`, the VM fixture in `vm-tests/src/nixos_generation.rs`).
//!
//! What is reproduced is the *format* (facts from `nixos/modules/system/activation/
//! activation-script.nix`, `top-level.nix`, `users-groups.nix`, `etc/etc.nix`):
//!
//! * `activate`: `#!<bash>`, `systemConfig='<toplevel>'`, the `export PATH=/empty; for i in …`
//!   loop, `_status=0`, the `ERR` trap, `umask 0022`, then one block per snippet —
//!   `#### Activation script snippet NAME:`, `_localstatus=0`, the text, the
//!   `if (( _localstatus > 0 )); then printf "Activation script snippet '%s' failed (%s)\n" …`
//!   lines — and the tail that points `/run/current-system` at the toplevel and
//!   `exit $_status`. The file is written by `echo`, so it ends with one extra newline.
//! * The snippet order: Nix's `textClosureMap` over the snippet names sorted by byte value,
//!   each snippet's `deps` emitted first (depth first, each name once), blocks joined by `\n`.
//! * `dry-activate`: the same, with every snippet that does not support dry activation
//!   replaced by `#### Activation script snippet NAME does not support dry activation.` (no
//!   newline after it), and no tail.
//! * The calls of the two Perl scripts exactly as `users-groups.nix` and `etc.nix` write them.
//!
//! The snippet bodies and every comment are this file's own words; they do what NixOS's
//! snippets do. A reader must rely on the format, never on a comment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One `system.activationScripts.<name>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub name: String,
    /// Snippets that must run first (`stringAfter [ … ]`, or `deps = [ … ]`).
    pub deps: Vec<String>,
    /// The snippet's text as Nix hands it over: a `lines` value, so usually ending in `\n`.
    pub text: String,
    pub supports_dry_activation: bool,
}

impl Snippet {
    /// A snippet without dependencies that does not support dry activation (a plain string
    /// in a NixOS configuration is exactly that).
    pub fn new(name: &str, text: &str) -> Snippet {
        Snippet {
            name: name.into(),
            deps: Vec::new(),
            text: text.into(),
            supports_dry_activation: false,
        }
    }

    pub fn after(mut self, deps: &[&str]) -> Snippet {
        self.deps = deps.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn dry(mut self) -> Snippet {
        self.supports_dry_activation = true;
        self
    }

    /// The block the generator emits for this snippet (its "headline" form).
    pub fn block(&self) -> String {
        let name = &self.name;
        format!(
            "#### Activation script snippet {name}:\n_localstatus=0\n{}\n\n\
             if (( _localstatus > 0 )); then\n  \
             printf \"Activation script snippet '%s' failed (%s)\\n\" \"{name}\" \"$_localstatus\"\n\
             fi\n",
            self.text
        )
    }

    /// What `dry-activate` holds instead of a snippet that does not support it.
    pub fn dry_placeholder(&self) -> String {
        format!(
            "#### Activation script snippet {} does not support dry activation.",
            self.name
        )
    }
}

/// Why a set of snippets cannot be turned into a script (NixOS fails the evaluation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnippetError {
    /// `snippet` names `dep` in its `deps`, and there is no such snippet.
    UnknownDependency { snippet: String, dep: String },
    /// Two snippets with one name (an attribute set cannot hold that).
    Duplicate(String),
}

impl fmt::Display for SnippetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnippetError::UnknownDependency { snippet, dep } => write!(
                f,
                "activation snippet {snippet:?} depends on {dep:?}, which is not defined"
            ),
            SnippetError::Duplicate(name) => {
                write!(f, "activation snippet {name:?} is defined twice")
            }
        }
    }
}

impl std::error::Error for SnippetError {}

/// The order in which NixOS's activation script runs the built-in snippets (Nix's
/// `textClosureMap` over their sorted names and declared deps): what a test expects of
/// [`snippet_order`] on [`builtin_snippets`] and of Stagehand's own ordering of its
/// built-in steps.
pub const BUILTIN_ORDER: [&str; 11] = [
    "stdio",
    "binsh",
    "users",
    "groups",
    "specialfs",
    "etc",
    "hashes",
    "modprobe",
    "udevd",
    "usrbinenv",
    "var",
];

/// The snippets in the order the generated script runs them: every name in byte order, each
/// one's dependencies first, every snippet once. A name is marked as emitted *before* its
/// dependencies are visited (as `textClosureList` does), so a dependency cycle ends instead
/// of looping.
pub fn snippet_order(snippets: &[Snippet]) -> Result<Vec<&Snippet>, SnippetError> {
    let mut by_name: BTreeMap<&str, &Snippet> = BTreeMap::new();
    for s in snippets {
        if by_name.insert(s.name.as_str(), s).is_some() {
            return Err(SnippetError::Duplicate(s.name.clone()));
        }
    }
    fn visit<'a>(
        s: &'a Snippet,
        by_name: &BTreeMap<&str, &'a Snippet>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<&'a Snippet>,
    ) -> Result<(), SnippetError> {
        for dep in &s.deps {
            if done.contains(dep.as_str()) {
                continue;
            }
            let d = by_name
                .get(dep.as_str())
                .ok_or_else(|| SnippetError::UnknownDependency {
                    snippet: s.name.clone(),
                    dep: dep.clone(),
                })?;
            done.insert(d.name.as_str());
            visit(d, by_name, done, out)?;
        }
        out.push(s);
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (name, s) in &by_name {
        if done.insert(*name) {
            visit(s, &by_name, &mut done, &mut out)?;
        }
    }
    Ok(out)
}

/// The inputs of `<toplevel>/activate` and `<toplevel>/dry-activate`.
#[derive(Debug, Clone)]
pub struct ActivateScript<'a> {
    /// The `#!` interpreter: a bash in the store (`pkgs.runtimeShell`).
    pub shell: &'a str,
    /// Store paths whose `bin` and `sbin` form the script's PATH (coreutils, grep, findutils,
    /// getent, shadow, util-linux, … on NixOS).
    pub path: &'a [String],
    /// The toplevel (`@out@`, substituted when the toplevel is built).
    pub system_config: &'a str,
    pub snippets: &'a [Snippet],
}

impl ActivateScript<'_> {
    /// The bytes of `<toplevel>/activate`.
    pub fn activate(&self) -> Result<String, SnippetError> {
        let blocks: Vec<String> = snippet_order(self.snippets)?
            .into_iter()
            .map(Snippet::block)
            .collect();
        let mut s = self.head(&blocks.join("\n"));
        s.push_str(
            "# Make this configuration the current configuration.\n\
             # readlink -f: when systemConfig is a link (a profile), the link that\n\
             # /run/current-system becomes still names the store path.\n\
             ln -sfn \"$(readlink -f \"$systemConfig\")\" /run/current-system\n\
             \n\
             exit $_status\n",
        );
        // top-level.nix writes the file with `echo "$activationScript" > $out/activate`.
        s.push('\n');
        Ok(s)
    }

    /// The bytes of `<toplevel>/dry-activate`.
    pub fn dry_activate(&self) -> Result<String, SnippetError> {
        let blocks: Vec<String> = snippet_order(self.snippets)?
            .into_iter()
            .map(|s| {
                if s.supports_dry_activation {
                    s.block()
                } else {
                    s.dry_placeholder()
                }
            })
            .collect();
        let mut s = self.head(&blocks.join("\n"));
        s.push('\n');
        Ok(s)
    }

    fn head(&self, body: &str) -> String {
        format!(
            "#!{shell}\n\
             \n\
             systemConfig='{config}'\n\
             \n\
             export PATH=/empty\n\
             for i in {path}; do\n    \
             PATH=$PATH:$i/bin:$i/sbin\n\
             done\n\
             \n\
             _status=0\n\
             trap \"_status=1 _localstatus=\\$?\" ERR\n\
             \n\
             # Ensure a consistent umask.\n\
             umask 0022\n\
             \n\
             {body}\n\
             \n",
            shell = self.shell,
            config = self.system_config,
            path = self.path.join(" "),
        )
    }
}

/// The store paths NixOS's own snippets name.
#[derive(Debug, Clone)]
pub struct BuiltinPaths {
    /// `bashInteractive` (for `/bin/sh`).
    pub bash_interactive: String,
    /// `coreutils` (for `/usr/bin/env`).
    pub coreutils: String,
    /// `perl.withPackages (p: [ p.FileSlurp p.JSON ])`, running update-users-groups.pl.
    pub users_perl: String,
    /// `…-update-users-groups.pl`
    pub update_users_groups: String,
    /// `…-users-groups.json`
    pub users_groups_json: String,
    /// The Perl that runs setup-etc.pl.
    pub etc_perl: String,
    /// `…-setup-etc.pl`
    pub setup_etc: String,
    /// The etc derivation (its `etc/` is the tree).
    pub etc: String,
    /// `earlyMountScript`: `specialMount …` lines (see [`early_mount_script`]).
    pub early_mounts: String,
    /// `kmod` (its `bin/modprobe`).
    pub kmod: String,
    /// `hardware.firmware` (its `lib/firmware`).
    pub firmware: String,
}

/// The snippets every NixOS system defines (scripted activation, Perl users and etc), with
/// these store paths: stdio, binsh, users, groups, specialfs, etc, hashes, modprobe, udevd,
/// usrbinenv, var. Their order in the script comes from [`snippet_order`].
///
/// The bodies are this file's words for what NixOS's do; where NixOS's text is only a fixed
/// command sequence with store paths (binsh, users, specialfs, etc, modprobe, udevd,
/// usrbinenv) the commands are the same, so a reader that recognises those by their commands
/// recognises these. `hashes` is worded differently (its message is prose): a reader that
/// knows NixOS's exact text runs it as bash, as it must any snippet it cannot classify.
pub fn builtin_snippets(p: &BuiltinPaths) -> Vec<Snippet> {
    let binsh = format!(
        "# system(3) and #! lines need /bin/sh: point it at the interactive bash, the old\n\
         # link replaced by one rename.\n\
         mkdir -p /bin\n\
         chmod 0755 /bin\n\
         ln -sfn \"{}/bin/sh\" /bin/.sh.tmp\n\
         mv /bin/.sh.tmp /bin/sh # atomic replace\n",
        p.bash_interactive
    );
    // users-groups.nix writes the call over two lines, the second starting with `-w`.
    let users = format!(
        "install -m 0700 -d /root\n\
         install -m 0755 -d /home\n\
         \n\
         {}/bin/perl \\\n\
         -w {} {}\n",
        p.users_perl, p.update_users_groups, p.users_groups_json
    );
    let specialfs = format!(
        "# Mount a special filesystem, or remount it with these options when it is mounted.\n\
         specialMount() {{\n  \
         local device=\"$1\"\n  \
         local mountPoint=\"$2\"\n  \
         local options=\"$3\"\n  \
         local fsType=\"$4\"\n\
         \n  \
         if mountpoint -q \"$mountPoint\"; then\n    \
         local options=\"remount,$options\"\n  \
         else\n    \
         mkdir -p \"$mountPoint\"\n    \
         chmod 0755 \"$mountPoint\"\n  \
         fi\n  \
         mount -t \"$fsType\" -o \"$options\" \"$device\" \"$mountPoint\"\n\
         }}\n\
         source {}\n",
        p.early_mounts
    );
    let etc = format!(
        "# /etc: links into the generation's etc tree, copies where it asks for them.\n\
         echo \"setting up /etc...\"\n\
         {}/bin/perl {} {}/etc\n",
        p.etc_perl, p.setup_etc, p.etc
    );
    let hashes = "# Name the accounts whose password hash uses a scheme libxcrypt no longer offers.\n\
         weak=()\n\
         while IFS=: read -r account hash _rest; do\n  \
         if [[ \"$hash\" = \"$\"* && ! \"$hash\" =~ ^\\$(y|gy|7|2b|2y|2a|6)\\$ ]]; then\n    \
         weak+=(\"$account\")\n  \
         fi\n\
         done </etc/shadow\n\
         \n\
         if (( \"${#weak[@]}\" )); then\n  \
         echo \"warning: these accounts cannot log in until they get a new password (hash scheme removed):\"\n  \
         printf ' - %s\\n' \"${weak[@]}\"\n\
         fi\n"
        .to_string();
    let modprobe = format!(
        "# The kernel runs this modprobe to autoload a module; it looks in the booted\n\
         # generation's module tree.\n\
         echo {}/bin/modprobe > /proc/sys/kernel/modprobe\n",
        p.kmod
    );
    let udevd = format!(
        "# udev handles uevents: no hotplug helper.\n\
         if [ -e /proc/sys/kernel/hotplug ]; then\n  \
         echo \"\" > /proc/sys/kernel/hotplug\n\
         fi\n\
         \n\
         # Where the kernel's firmware loader looks.\n\
         if [ -e /sys/module/firmware_class/parameters/path ]; then\n  \
         echo -n \"{}/lib/firmware\" > /sys/module/firmware_class/parameters/path\n\
         fi\n",
        p.firmware
    );
    let usrbinenv = format!(
        "mkdir -p /usr/bin\n\
         chmod 0755 /usr/bin\n\
         ln -sfn {}/bin/env /usr/bin/.env.tmp\n\
         mv /usr/bin/.env.tmp /usr/bin/env # atomic replace\n",
        p.coreutils
    );
    vec![
        // Obsolete, kept empty so old `deps` still resolve.
        Snippet::new("stdio", ""),
        Snippet::new("binsh", &binsh).after(&["stdio"]),
        Snippet::new("users", &users).dry(),
        Snippet::new("groups", "").after(&["users"]),
        Snippet::new("specialfs", &specialfs),
        Snippet::new("etc", &etc).after(&["users", "groups", "specialfs"]),
        Snippet::new("hashes", &hashes).after(&["users"]),
        Snippet::new("modprobe", &modprobe),
        Snippet::new("udevd", &udevd),
        Snippet::new("usrbinenv", &usrbinenv),
        Snippet::new("var", ""),
    ]
}

/// One special filesystem: device, mount point, options, type.
pub type SpecialFs<'a> = (&'a str, &'a str, &'a str, &'a str);

/// NixOS's `boot.specialFileSystems` for a machine outside a container (the `/run/keys`
/// ramfs belongs to group `keys`, gid 96).
pub const SPECIAL_FILESYSTEMS: &[SpecialFs<'static>] = &[
    ("proc", "/proc", "nosuid,noexec,nodev", "proc"),
    ("sysfs", "/sys", "nosuid,noexec,nodev", "sysfs"),
    (
        "devtmpfs",
        "/dev",
        "nosuid,strictatime,mode=755,size=5%",
        "devtmpfs",
    ),
    (
        "devpts",
        "/dev/pts",
        "nosuid,noexec,mode=620,ptmxmode=0666,gid=3",
        "devpts",
    ),
    (
        "tmpfs",
        "/dev/shm",
        "nosuid,nodev,strictatime,mode=1777,size=50%",
        "tmpfs",
    ),
    (
        "tmpfs",
        "/run",
        "nosuid,nodev,strictatime,mode=755,size=25%",
        "tmpfs",
    ),
    (
        "ramfs",
        "/run/keys",
        "nosuid,nodev,mode=750,gid=96",
        "ramfs",
    ),
];

/// `earlyMountScript`: one `specialMount "DEVICE" "MOUNTPOINT" "OPTIONS" "TYPE"` line per
/// filesystem, sourced by the specialfs snippet and by stage 2.
pub fn early_mount_script(filesystems: &[SpecialFs<'_>]) -> String {
    filesystems
        .iter()
        .map(|(dev, mp, opts, ty)| format!("specialMount \"{dev}\" \"{mp}\" \"{opts}\" \"{ty}\"\n"))
        .collect()
}

/// The inputs of `<toplevel>/init` in a system with the scripted initrd: stage-2-init.sh
/// with its `@…@` substituted.
#[derive(Debug, Clone)]
pub struct Stage2Init<'a> {
    /// `#!` and the shell that runs the post-boot commands.
    pub shell: &'a str,
    /// The toplevel (`@systemConfig@`).
    pub system_config: &'a str,
    /// Store paths whose `bin`/`sbin` are the script's PATH (coreutils, util-linux).
    pub path: &'a [String],
    /// The `earlyMountScript` store file.
    pub early_mounts: &'a str,
    /// A store file with `boot.postBootCommands`.
    pub post_boot_commands: &'a str,
    /// `boot.systemdExecutable`.
    pub systemd_executable: &'a str,
}

/// `<toplevel>/init`: what NixOS's stage 2 does, in this file's own words — remount `/`
/// read-write, mount the special filesystems when no stage 1 did, make `/nix/store` a
/// read-only bind mount owned by root:nixbld 1775, create `/etc` and `/tmp`, run
/// `$systemConfig/activate` (its status ignored), point `/run/booted-system` at the
/// generation, run the post-boot commands, make sure `/etc/machine-id` exists, exec systemd.
/// (NixOS also pipes its own output to `/dev/kmsg` through `tee`; that is left out: it is
/// known to hang stage 2 now and then, and the console shows the same lines.)
pub fn stage2_init_script(s: &Stage2Init<'_>) -> String {
    let path: Vec<String> = s
        .path
        .iter()
        .flat_map(|p| [format!("{p}/bin"), format!("{p}/sbin")])
        .collect();
    format!(
        r#"#! {shell}

systemConfig={config}

export HOME=/root PATH="{path}"

# Under the systemd initrd this runs as prepare-root: no greeting, no exec.
inInitrd() {{ [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" = true ]; }}

if ! inInitrd; then
    echo
    echo -e "\e[1;32m<<< NixOS Stage 2 >>>\e[0m"
    echo
    # A stage 1 may have left / read-only, and without one it is read-only for sure.
    if [ -z "${{container:-}}" ]; then
        mount -n -o remount,rw none /
    fi
fi

# Nothing mounted /proc: no stage 1 ran (a container, a direct boot). Mount the special
# filesystems here.
if [ ! -e /proc/1 ]; then
    specialMount() {{
        mkdir -m 0755 -p "$2"
        mount -n -t "$4" -o "$3" "$1" "$2"
    }}
    source {early_mounts}
fi

if ! inInitrd; then
    for word in $(</proc/cmdline); do
        if [ "$word" = boot.debugtrace ]; then set -x; fi
    done
fi

echo "booting system configuration $systemConfig" > /dev/kmsg

# The store: root and the build users' group (30000), sticky, read-only to everyone but
# the daemon. chown/chmod stay quiet on a read-only store (squashfs).
chown -f 0:30000 /nix/store
chmod -f 1775 /nix/store
if [[ ",$(findmnt --noheadings --output OPTIONS /nix/store)," != *,ro,* ]]; then
    mount --bind /nix/store /nix/store
    mount -o remount,ro,bind /nix/store
fi

install -m 0755 -d /etc
if [ -d /etc/nixos ]; then
    install -m 0755 -d /etc/nixos
fi
install -m 01777 -d /tmp

echo "running activation script..."
$systemConfig/activate

ln -sfn "$systemConfig" /run/booted-system

# Run any user-specified commands.
{shell} {post_boot}

# An empty machine-id (rather than none) keeps systemd from treating this as a first boot.
: >> /etc/machine-id

if ! inInitrd; then
    echo "starting systemd..."
    exec {systemd} "$@"
fi
"#,
        shell = s.shell,
        config = s.system_config,
        path = path.join(":"),
        early_mounts = s.early_mounts,
        post_boot = s.post_boot_commands,
        systemd = s.systemd_executable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> BuiltinPaths {
        let sp = |n: &str| format!("/nix/store/{}-{n}", "a".repeat(32));
        BuiltinPaths {
            bash_interactive: sp("bash-interactive-5.2p37"),
            coreutils: sp("coreutils-9.5"),
            users_perl: sp("perl-5.40.0-env"),
            update_users_groups: sp("update-users-groups.pl"),
            users_groups_json: sp("users-groups.json"),
            etc_perl: sp("perl-5.40.0-env"),
            setup_etc: sp("setup-etc.pl"),
            etc: sp("etc"),
            early_mounts: sp("mounts.sh"),
            kmod: sp("kmod-31"),
            firmware: sp("firmware"),
        }
    }

    fn names(s: &[&Snippet]) -> Vec<String> {
        s.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn nixos_order_of_the_builtin_snippets() {
        let mut snippets = builtin_snippets(&paths());
        assert_eq!(
            names(&snippet_order(&snippets).expect("order")),
            BUILTIN_ORDER
        );
        // A third-party snippet lands at its name's place, after its deps.
        snippets.push(Snippet::new("setupSecrets", "true\n").after(&["specialfs"]));
        snippets.push(Snippet::new("aaa", "true\n").after(&["var"]));
        let order = names(&snippet_order(&snippets).expect("order"));
        assert_eq!(&order[..3], ["var", "aaa", "stdio"]);
        let at = |n: &str| order.iter().position(|x| x == n).expect(n);
        assert_eq!(at("setupSecrets"), at("modprobe") + 1);
        assert_eq!(at("udevd"), at("setupSecrets") + 1);
    }

    #[test]
    fn unknown_deps_and_duplicates_are_errors_and_cycles_end() {
        let bad = [Snippet::new("a", "").after(&["nope"])];
        assert_eq!(
            snippet_order(&bad).map(|v| v.len()),
            Err(SnippetError::UnknownDependency {
                snippet: "a".into(),
                dep: "nope".into()
            })
        );
        let dup = [Snippet::new("a", ""), Snippet::new("a", "x")];
        assert_eq!(
            snippet_order(&dup).map(|v| v.len()),
            Err(SnippetError::Duplicate("a".into()))
        );
        let cycle = [
            Snippet::new("a", "").after(&["b"]),
            Snippet::new("b", "").after(&["a"]),
        ];
        assert_eq!(names(&snippet_order(&cycle).expect("cycle")), ["b", "a"]);
    }

    #[test]
    fn activate_has_the_generated_shape() {
        let snippets = vec![
            Snippet::new("users", "echo u\n").dry(),
            Snippet::new("stdio", ""),
            Snippet::new("etc", "echo e\n").after(&["users"]),
        ];
        let path = vec![
            "/nix/store/x-coreutils".to_string(),
            "/nix/store/y-grep".into(),
        ];
        let a = ActivateScript {
            shell: "/nix/store/b-bash/bin/bash",
            path: &path,
            system_config: "/nix/store/t-nixos-system-h-1",
            snippets: &snippets,
        };
        let text = a.activate().expect("activate");
        let want = "#!/nix/store/b-bash/bin/bash\n\n\
            systemConfig='/nix/store/t-nixos-system-h-1'\n\n\
            export PATH=/empty\n\
            for i in /nix/store/x-coreutils /nix/store/y-grep; do\n    PATH=$PATH:$i/bin:$i/sbin\ndone\n\n\
            _status=0\ntrap \"_status=1 _localstatus=\\$?\" ERR\n\n\
            # Ensure a consistent umask.\numask 0022\n\n\
            #### Activation script snippet users:\n_localstatus=0\necho u\n\n\n\
            if (( _localstatus > 0 )); then\n  printf \"Activation script snippet '%s' failed (%s)\\n\" \"users\" \"$_localstatus\"\nfi\n\n\
            #### Activation script snippet etc:\n_localstatus=0\necho e\n\n\n\
            if (( _localstatus > 0 )); then\n  printf \"Activation script snippet '%s' failed (%s)\\n\" \"etc\" \"$_localstatus\"\nfi\n\n\
            #### Activation script snippet stdio:\n_localstatus=0\n\n\n\
            if (( _localstatus > 0 )); then\n  printf \"Activation script snippet '%s' failed (%s)\\n\" \"stdio\" \"$_localstatus\"\nfi\n\n\n";
        assert!(text.starts_with(want), "{text}");
        assert!(text.ends_with(
            "ln -sfn \"$(readlink -f \"$systemConfig\")\" /run/current-system\n\nexit $_status\n\n"
        ));
        let dry = a.dry_activate().expect("dry");
        assert!(dry.contains("#### Activation script snippet users:\n"));
        assert!(dry.ends_with(
            "\n#### Activation script snippet stdio does not support dry activation.\n\n\n"
        ));
        assert!(dry.contains("fi\n\n#### Activation script snippet etc does not support"));
        assert!(dry.contains(
            "#### Activation script snippet etc does not support dry activation.\n#### Activation script snippet stdio"
        ));
        assert!(!dry.contains("/run/current-system"));
    }

    /// The scripts are bash: `bash -n` parses them (when bash is here; the VM tests run them).
    #[test]
    fn scripts_parse_as_bash() {
        let bash = crate::host::require_tool("bash");
        let p = paths();
        let mut snippets = builtin_snippets(&p);
        snippets.push(Snippet::new("third", "echo \"$systemConfig\"\n"));
        let path = vec![p.coreutils.clone()];
        let a = ActivateScript {
            shell: "/bin/bash",
            path: &path,
            system_config: "/nix/store/t-nixos-system-h-1",
            snippets: &snippets,
        };
        let init = stage2_init_script(&Stage2Init {
            shell: "/bin/bash",
            system_config: "/nix/store/t-nixos-system-h-1",
            path: &path,
            early_mounts: &p.early_mounts,
            post_boot_commands: "/nix/store/c-local-cmds",
            systemd_executable: "/run/current-system/systemd/lib/systemd/systemd",
        });
        for (what, text) in [
            ("activate", a.activate().expect("activate")),
            ("dry-activate", a.dry_activate().expect("dry")),
            ("init", init),
            ("mounts", early_mount_script(SPECIAL_FILESYSTEMS)),
        ] {
            let out = std::process::Command::new(&bash)
                .args(["-n", "-c", &text])
                .output()
                .expect("bash -n");
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
