//! The generations of NixOS's `nixos/tests/switch-test.nix` (its `specialisation`s), as
//! data: the unit files, drop-ins, wants links, `/etc/fstab` and activation snippets each one
//! puts into its etc tree, named as in the original.
//!
//! What changes on the way: this test system has no `sysinit.target` or `basic.target`, so
//! every unit says `DefaultDependencies=no`, and what NixOS hangs off `multi-user.target`,
//! `sockets.target`, `timers.target` or `paths.target` hangs off `default.target` (the
//! comparison only sees the file contents, which differ between two generations exactly as
//! NixOS's do). Programs are busybox's; the socket-activated service is the guest probe's
//! `serve-hello` instead of a Python script.

/// One generation's etc entries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub name: &'static str,
    /// `etc/<path>` → text.
    pub files: Vec<(String, String)>,
    /// `etc/<path>` → link target.
    pub links: Vec<(String, String)>,
    /// `init-interface-version` in the toplevel.
    pub init_interface: &'static str,
    /// One bash activation snippet (`system.activationScripts`), dry-activation capable.
    pub snippet: Option<String>,
    /// An executable generator in `etc/systemd/system-generators/`, by name → script.
    pub generator: Option<(String, String)>,
}

/// NixOS's current `init-interface-version`.
pub(crate) const INIT_INTERFACE: &str = "systemd 2";

/// Where the guest's programs live: `<busybox store path>/bin`.
pub(crate) struct Progs {
    pub bin: String,
    /// The guest probe (`serve-hello` answers on a socket-activated service's socket).
    pub probe: String,
}

impl Config {
    fn new(name: &'static str) -> Config {
        Config {
            name,
            init_interface: INIT_INTERFACE,
            ..Config::default()
        }
    }

    fn unit(mut self, name: &str, text: String) -> Config {
        self.files
            .retain(|(p, _)| p != &format!("systemd/system/{name}"));
        self.files.push((format!("systemd/system/{name}"), text));
        self
    }

    fn etc(mut self, path: &str, text: String) -> Config {
        self.files.retain(|(p, _)| p != path);
        self.files.push((path.to_string(), text));
        self
    }

    /// `default.target` wants `unit` (a link to `file`, the unit's own or its template's).
    fn want_as(mut self, unit: &str, file: &str) -> Config {
        self.links.push((
            format!("systemd/system/default.target.wants/{unit}"),
            format!("../{file}"),
        ));
        self
    }

    fn want(self, unit: &str) -> Config {
        self.want_as(unit, unit)
    }
}

/// `[Unit]` lines (always `DefaultDependencies=no`) and the rest of the file.
fn unit_file(unit: &str, rest: &str) -> String {
    format!("[Unit]\nDefaultDependencies=no\n{unit}\n{rest}")
}

/// The oneshot NixOS's `simpleService` declares; `unit`/`service` add lines.
fn oneshot(p: &Progs, unit: &str, service: &str) -> String {
    unit_file(
        unit,
        &format!(
            "[Service]\nExecReload={b}/true\nExecStart={b}/true\nRemainAfterExit=true\n\
             Type=oneshot\n{service}",
            b = p.bin
        ),
    )
}

/// The base system every generation shares: a D-Bus stand-in (reloaded, never restarted,
/// as NixOS's `dbus.service` with `reloadIfChanged`), the targets the fstab generator hangs
/// mounts and swaps off, and the fstab with the root.
fn base(p: &Progs, name: &'static str) -> Config {
    Config::new(name)
        .unit("dbus.service", dbus(p, ""))
        .want("dbus.service")
        .unit("local-fs.target", unit_file("", ""))
        .want("local-fs.target")
        .unit("swap.target", unit_file("", ""))
        .want("swap.target")
        .etc("fstab", fstab(""))
        .unit("user@.service", USER_MANAGER.into())
        .etc("systemd/user/default.target", "[Unit]\nDescription=Main User Target\n".into())
        .etc(
            "systemd/user/nixos-activation.service",
            format!(
                "[Unit]\nDescription=Run user-specific NixOS activation\nDefaultDependencies=no\n\n[Service]\n\
                 ExecStart={}/sh -c 'echo activated >> %t/nixos-activation'\nType=oneshot\n",
                p.bin
            ),
        )
}

/// A user manager without PAM or logind (neither is in the test system): the host's
/// systemd in user mode, its runtime directory made by the system manager.
const USER_MANAGER: &str =
    "[Unit]\nDescription=User Manager for UID %i\nDefaultDependencies=no\n\n\
    [Service]\nUser=%i\nType=notify\nExecStart=/usr/lib/systemd/systemd --user\n\
    RuntimeDirectory=user/%i\nEnvironment=XDG_RUNTIME_DIR=/run/user/%i\nDelegate=yes\n\
    KillMode=mixed\nTimeoutStartSec=120\n";

fn dbus(p: &Progs, unit: &str) -> String {
    unit_file(
        &format!("Description=D-Bus stand-in\n{unit}"),
        &format!(
            "[Service]\nExecReload={b}/true\nExecStart={b}/sleep 1000000\nX-ReloadIfChanged=true\n",
            b = p.bin
        ),
    )
}

fn fstab(extra: &str) -> String {
    format!("# Filesystems.\n/dev/vda / ext4 defaults 0 0\n{extra}")
}

fn simple_service(p: &Progs, name: &'static str, unit: &str, service: &str) -> Config {
    base(p, name)
        .unit("test.service", oneshot(p, unit, service))
        .want("test.service")
}

/// `simpleServiceNostop` plus a `systemd.packages` file: the package's unit becomes the
/// main file and the NixOS definition its `overrides.conf` drop-in.
fn packaged(p: &Progs, name: &'static str, package_text: &str) -> Config {
    base(p, name)
        .unit("test.service", package_text.to_string())
        .unit(
            "test.service.d/overrides.conf",
            oneshot(p, "", "X-StopIfChanged=false\n"),
        )
        .want("test.service")
}

fn nostop(p: &Progs, name: &'static str, unit: &str, service: &str) -> Config {
    simple_service(p, name, unit, &format!("X-StopIfChanged=false\n{service}"))
}

/// Every generation of the suite, named as in switch-test.nix (`""` is the machine
/// without a specialisation: [`BASE`]).
pub(crate) fn configs(p: &Progs) -> Vec<Config> {
    let mut c = vec![
        base(p, BASE),
        // `other`: another machine; its pre-switch checks come in PRE_SWITCH_CHECK.
        base(p, "other").etc("other-machine", "other\n".into()),
        base(p, "failingCheck").etc("other-machine", "failing check\n".into()),
        Config {
            init_interface: "systemd 0",
            ..base(p, "brokenInitInterface")
        },
        base(p, "modifiedSystemConf").etc(
            "systemd/system.conf",
            "[Manager]\nDefaultEnvironment=XXX_SYSTEM=foo\n".into(),
        ),
        base(p, "addedMount").etc("fstab", fstab("tmpfs /test tmpfs defaults 0 0\n")),
        base(p, "addedMountOptsModified").etc("fstab", fstab("tmpfs /test tmpfs x-test 0 0\n")),
        base(p, "addedMountDevModified").etc("fstab", fstab("ramfs /test tmpfs x-test 0 0\n")),
        base(p, "storeMountModified")
            .etc("fstab", "# Filesystems.\nauto / ext4 defaults 0 0\n".into()),
        base(p, "automount").etc(
            "fstab",
            fstab("tmpfs /testauto tmpfs x-systemd.automount 0 0\n"),
        ),
        base(p, "swap").etc(
            "fstab",
            fstab("\n# Swap devices.\n/swapfile none swap defaults 0 0\n"),
        ),
        simple_service(p, "simpleService", "", ""),
        simple_service(
            p,
            "simpleServiceDifferentDescription",
            "Description=Test unit",
            "",
        ),
        simple_service(p, "simpleServiceModified", "", "X-Test=true\n"),
        nostop(p, "simpleServiceNostop", "", ""),
        simple_service(p, "simpleServiceReload", "", "X-ReloadIfChanged=true\n"),
        simple_service(
            p,
            "simpleServiceNorestart",
            "",
            "X-RestartIfChanged=false\n",
        ),
        simple_service(p, "simpleServiceFailing", "", "X-Test=true\n").unit(
            "test.service",
            oneshot(p, "", "X-Test=true\n").replace(
                &format!("ExecStart={}/true", p.bin),
                &format!("ExecStart={}/false", p.bin),
            ),
        ),
        autorestart(p, "autorestartService", "true"),
        autorestart(p, "autorestartServiceFailing", "false"),
    ];
    c.extend(unit_file_configs(p));
    c.extend(activation_script_configs(p));
    c.extend(socket_configs(p));
    c.extend(unit_type_configs(p));
    c
}

/// The generations of `unit file parser` and of the services whose units come from a
/// package, with drop-ins, requirements and templates.
fn unit_file_configs(p: &Progs) -> Vec<Config> {
    vec![
        packaged(
            p,
            "simpleServiceWithExtraSection",
            "[X-Test]\nX-Test-Value=a\n",
        ),
        packaged(
            p,
            "simpleServiceWithExtraSectionOtherName",
            "[X-Test2]\nX-Test-Value=a\n",
        ),
        packaged(
            p,
            "simpleServiceWithInstallSection",
            "[Install]\nWantedBy=multi-user.target\n",
        ),
        nostop(p, "simpleServiceWithExtraKey", "", "X-Test=test\n"),
        nostop(
            p,
            "simpleServiceWithExtraKeyOtherValue",
            "",
            "X-Test=test2\n",
        ),
        nostop(
            p,
            "simpleServiceWithExtraKeyOtherName",
            "",
            "X-Test2=test\n",
        ),
        nostop(
            p,
            "simpleServiceReloadTrigger",
            "X-Reload-Triggers=/dev/null",
            "",
        ),
        nostop(
            p,
            "simpleServiceReloadTriggerModified",
            "X-Reload-Triggers=/dev/zero",
            "",
        ),
        nostop(
            p,
            "simpleServiceReloadTriggerModifiedAndSomethingElse",
            "X-Reload-Triggers=/dev/zero",
            "X-Test=test\n",
        ),
        nostop(
            p,
            "simpleServiceReloadTriggerModifiedSomethingElse",
            "",
            "X-Test=test\n",
        ),
        base(p, "unitWithBackslash")
            .unit("escaped\\x2ddash.service", oneshot(p, "", ""))
            .want("escaped\\x2ddash.service"),
        base(p, "unitWithBackslashModified")
            .unit("escaped\\x2ddash.service", oneshot(p, "", "X-Test=test\n"))
            .want("escaped\\x2ddash.service"),
        base(p, "unitWithMultilineValue").unit(
            "test.service",
            unit_file(
                "",
                &format!(
                    "[Service]\nExecStart={}/true \\\n# ignored\n; ignored\n  blah blah\n",
                    p.bin
                ),
            ),
        ),
        base(p, "unitStartingWithDash")
            .unit("-.service", dash(p, ""))
            .want("-.service"),
        base(p, "unitStartingWithDashModified")
            .unit(
                "-.service",
                dash(
                    p,
                    &format!("ExecReload={}/true\nX-ReloadIfChanged=true\n", p.bin),
                ),
            )
            .want("-.service"),
        requirement(p, "unitWithRequirement", "", ""),
        requirement(
            p,
            "unitWithRequirementModified",
            "X-Test=test\n",
            "X-Reload-Triggers=test",
        ),
        requirement(
            p,
            "unitWithRequirementModifiedNostart",
            "",
            "RefuseManualStart=true",
        ),
        template(p, "unitWithTemplate", ""),
        template(p, "unitWithTemplateModified", "X-Test=test\n"),
    ]
}

/// The machine without a specialisation.
pub(crate) const BASE: &str = "base";

fn autorestart(p: &Progs, name: &'static str, exec: &str) -> Config {
    base(p, name)
        .unit(
            "autorestart.service",
            unit_file(
                "",
                &format!(
                    "[Service]\nExecStart={}/{exec}\nRestart=always\nRestartSec=20y\nType=simple\n",
                    p.bin
                ),
            ),
        )
        .want("autorestart.service")
}

fn dash(p: &Progs, extra: &str) -> String {
    unit_file(
        "",
        &format!(
            "[Service]\nExecStart={}/true\nRemainAfterExit=true\nType=oneshot\n{extra}",
            p.bin
        ),
    )
}

fn requirement(p: &Progs, name: &'static str, required_service: &str, test_unit: &str) -> Config {
    base(p, name)
        .unit("required-service.service", oneshot(p, "", required_service))
        .want("required-service.service")
        .unit(
            "test-service.service",
            oneshot(
                p,
                &format!("Requires=required-service.service\n{test_unit}"),
                "",
            ),
        )
        .want("test-service.service")
}

fn template(p: &Progs, name: &'static str, service: &str) -> Config {
    base(p, name)
        .unit("instantiated@.service", oneshot(p, "", service))
        .unit(
            "instantiated@one.service.d/overrides.conf",
            "[Unit]\n".into(),
        )
        .want_as("instantiated@one.service", "instantiated@.service")
        .unit(
            "instantiated@two.service.d/overrides.conf",
            "[Unit]\n".into(),
        )
        .want_as("instantiated@two.service", "instantiated@.service")
}

/// `restart-and-reload-by-activation-script` and its `-modified` variant.
fn activation_script_configs(p: &Progs) -> Vec<Config> {
    let simple = oneshot(p, "", "");
    let restart = oneshot(p, "", "X-StopIfChanged=false\n");
    let reload = oneshot(p, "", "X-ReloadIfChanged=true\n");
    let norestart = oneshot(p, "", "X-RestartIfChanged=false\n");
    let make = |name: &'static str, modified: &str| {
        let mut c = base(p, name);
        for (unit, text) in [
            ("simple-service", &simple),
            ("simple-restart-service", &restart),
            ("simple-reload-service", &reload),
            ("no-restart-service", &norestart),
            ("reload-triggers", &simple),
            ("reload-triggers-and-restart-by-as", &simple),
        ] {
            c = c
                .unit(&format!("{unit}.service"), text.clone())
                .unit(&format!("templated-{unit}@.service"), text.clone())
                .unit(
                    &format!("templated-{unit}@instance.service.d/overrides.conf"),
                    "[Unit]\n".into(),
                );
        }
        c = c
            .unit(
                "reload-triggers-and-restart.service",
                oneshot(p, "", &format!("X-StopIfChanged=false\n{modified}")),
            )
            .unit(
                "templated-reload-triggers-and-restart@.service",
                simple.clone(),
            )
            .unit(
                "templated-reload-triggers-and-restart@instance.service.d/overrides.conf",
                format!("[Service]\n{modified}X-StopIfChanged=false\n"),
            );
        for unit in ["reload-triggers", "reload-triggers-and-restart"] {
            c = c.want(&format!("{unit}.service")).want_as(
                &format!("templated-{unit}@instance.service"),
                &format!("templated-{unit}@.service"),
            );
        }
        c.snippet = Some(ACTIVATION_SNIPPET.into());
        c
    };
    vec![
        make("restart-and-reload-by-activation-script", ""),
        make(
            "restart-and-reload-by-activation-script-modified",
            "X-Modified=test\n",
        ),
    ]
}

/// switch-test.nix's `restart-and-reload-test` activation script, verbatim in effect.
const ACTIVATION_SNIPPET: &str = r#"if [ "$NIXOS_ACTION" = dry-activate ]; then
  f=/run/nixos/dry-activation-restart-list
  g=/run/nixos/dry-activation-reload-list
else
  f=/run/nixos/activation-restart-list
  g=/run/nixos/activation-reload-list
fi
cat <<EOF >> "$f"
simple-service.service
simple-restart-service.service
simple-reload-service.service
no-restart-service.service
reload-triggers-and-restart-by-as.service
templated-simple-service@instance.service
templated-simple-restart-service@instance.service
templated-simple-reload-service@instance.service
templated-no-restart-service@instance.service
templated-reload-triggers-and-restart-by-as@instance.service
EOF

cat <<EOF >> "$g"
reload-triggers.service
reload-triggers-and-restart-by-as.service
reload-triggers-and-restart.service
templated-reload-triggers@instance.service
templated-reload-triggers-and-restart-by-as@instance.service
templated-reload-triggers-and-restart@instance.service
EOF
"#;

fn socket_configs(p: &Progs) -> Vec<Config> {
    let make = |name: &'static str, unit: &str, service: &str| {
        base(p, name)
            .unit(
                "socket-activated.service",
                unit_file(
                    &format!("Description=A socket-activated service\n{unit}"),
                    &format!(
                        "[Service]\nExecReload={b}/true\nExecStart={probe} serve-hello\n\
                         StandardError=null\nStandardInput=socket\nStandardOutput=null\n{service}",
                        b = p.bin,
                        probe = p.probe,
                    ),
                ),
            )
            .unit(
                "socket-activated.socket",
                unit_file(
                    "",
                    "[Socket]\nListenStream=/run/test.sock\nSocketMode=0777\n",
                ),
            )
            .want("socket-activated.socket")
    };
    vec![
        make("simple-socket", "", "X-StopIfChanged=false\n"),
        make(
            "simple-socket-service-modified",
            "",
            "X-StopIfChanged=false\nX-Test=test\n",
        ),
        make("simple-socket-stop-if-changed", "", ""),
        make(
            "simple-socket-stop-if-changed-and-reloadtrigger",
            "X-Reload-Triggers=test",
            "",
        ),
    ]
}

/// Mounts, timers, targets, paths, slices, the D-Bus reload and the generator.
fn unit_type_configs(p: &Progs) -> Vec<Config> {
    let b = &p.bin;
    let mount = |name: &'static str, what: &str, options: &str| {
        base(p, name)
            .unit(
                "testmount.mount",
                unit_file(
                    "Description=Testmount",
                    &format!(
                        "[Mount]\nOptions={options}\nType={what}\nWhat={what}\nWhere=/testmount\n"
                    ),
                ),
            )
            .want("testmount.mount")
    };
    let timer = |name: &'static str, on: &str| {
        base(p, name)
            .unit(
                "test-timer.timer",
                unit_file("", &format!("[Timer]\nOnCalendar={on}\n")),
            )
            .want("test-timer.timer")
            .unit(
                "test-timer.service",
                unit_file(
                    "",
                    &format!("[Service]\nExecStart={b}/true\nType=oneshot\n"),
                ),
            )
    };
    let target = |name: &'static str, unit: &str| {
        base(p, name)
            .unit("test-target.target", unit_file(unit, ""))
            .want("test-target.target")
            .unit(
                "test-service.service",
                unit_file(
                    "BindsTo=test-target.target",
                    &format!("[Service]\nExecStart={b}/sleep 1000000\n"),
                ),
            )
    };
    let path = |name: &'static str, watched: &str| {
        base(p, name)
            .unit(
                "test-watch.path",
                unit_file("", &format!("[Path]\nPathExists={watched}\n")),
            )
            .want("test-watch.path")
            .unit(
                "test-watch.service",
                unit_file(
                    "",
                    &format!(
                        "[Service]\nExecStart={b}/touch /testpath-modified\nRemainAfterExit=true\n\
                         Type=oneshot\n"
                    ),
                ),
            )
    };
    let slice = |name: &'static str, slice: &str| {
        base(p, name)
            .unit("testslice.slice", unit_file("", slice))
            .unit(
                "testservice.service",
                unit_file(
                    "",
                    &format!(
                        "[Service]\nExecStart={b}/true\nRemainAfterExit=true\n\
                         Slice=testslice.slice\nType=oneshot\n"
                    ),
                ),
            )
    };
    let mut generators = base(p, "generators");
    generators.generator = Some((
        "simple-generator".into(),
        format!(
            "#!{b}/sh\n{b}/cat >$1/simple-generated.service <<EOF\n[Unit]\n\
             DefaultDependencies=no\n[Service]\nExecStart={b}/sleep 1000000\nEOF\n"
        ),
    ));
    vec![
        mount("mount", "tmpfs", "size=1M"),
        mount("mountOptionsModified", "tmpfs", "size=10M"),
        mount("mountModified", "ramfs", "size=10M"),
        timer("timer", "@1395716396"),
        timer("timerModified", "Fri 2012-11-23 16:00:00"),
        base(p, "hybridSleepModified").unit("hybrid-sleep.target", unit_file("X-Test=true", "")),
        target("target", ""),
        target("targetModified", "X-Test=true"),
        target(
            "targetModifiedStopOnReconfig",
            "X-StopOnReconfiguration=true",
        ),
        path("path", "/testpath"),
        path("pathModified", "/testpath2"),
        slice("slice", "[Slice]\nMemoryMax=1\n"),
        slice("sliceModified", ""),
        base(p, "dbusReload").unit(
            "dbus.service",
            dbus(
                p,
                "X-Restart-Triggers=/nix/store/00000000000000000000000000000000-dbus-reload-dummy",
            ),
        ),
        generators,
    ]
}
