//! Several `stagehand etc` and `stagehand activate` processes started at once on one root
//! (issue #15 item 12): they take turns through the root's activation lock, each exits 0,
//! and `/etc` ends exactly as one run alone leaves it.

use std::process::{Child, Command, Stdio};

use stagehand_testkit::FakeRoot;

const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Generation `g`: an etc tree whose entries mostly change between generations (obsolete
/// links and copies to remove), and a toplevel activating it.
fn generation(r: &FakeRoot, g: usize) -> (String, String) {
    let mut owned: Vec<(String, String, bool)> = Vec::new();
    for i in 0..30 {
        owned.push((
            format!("common/c{i}"),
            format!("common {i} of {g}\n"),
            false,
        ));
        owned.push((format!("only{g}/f{i}"), format!("file {i}\n"), false));
        owned.push((format!("top{g}-{i}"), format!("top {i}\n"), false));
    }
    for i in 0..8 {
        owned.push((format!("copy{g}-{i}"), format!("copy {i} of {g}\n"), true));
    }
    let spec: Vec<stagehand_testkit::TreeSpec<'_>> = owned
        .iter()
        .map(|(p, c, copy)| (p.as_str(), c.as_str(), copy.then_some(("0644", "+0", "+0"))))
        .collect();
    let tree = r.etc_tree(&format!("conc{g}"), &spec);
    let top = format!("/nix/store/conc{g}-nixos-system");
    r.write(
        &format!("{top}/activation.json"),
        &format!(r#"{{"version": 1, "etc": "{tree}"}}"#),
    );
    (tree, top)
}

fn start(r: &FakeRoot, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .arg("--root")
        .arg(r.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stagehand")
}

#[test]
fn concurrent_etc_and_activate_runs_on_one_root_all_succeed() {
    const RUNS: usize = 6;
    let r = FakeRoot::new();
    let reference = FakeRoot::new();
    let gens: Vec<(String, String)> = (0..2).map(|g| generation(&r, g)).collect();
    for g in 0..2 {
        generation(&reference, g);
    }
    for round in 0..6 {
        let (tree, top) = &gens[round % 2];
        let children: Vec<(usize, Child)> = (0..RUNS)
            .map(|i| {
                let child = if i % 2 == 0 {
                    start(&r, &["etc", tree])
                } else {
                    start(&r, &["activate", "--action", "boot", top])
                };
                (i, child)
            })
            .collect();
        for (i, child) in children {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "round {round}, run {i}: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let alone = Command::new(BIN)
            .args(["etc", tree, "--root"])
            .arg(reference.path())
            .output()
            .expect("reference run");
        assert!(alone.status.success());
        assert_eq!(
            r.snapshot("/etc"),
            reference.snapshot("/etc"),
            "round {round}"
        );
    }
}
