use super::*;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn profiles() -> Vec<Profile> {
    (1..=3)
        .map(|n| Profile {
            number: n,
            base: format!("h{n}-nixos-system-x-{n}"),
        })
        .collect()
}

#[test]
fn profile_numbers() {
    assert_eq!(profile_number("system-12-link"), Some(12));
    assert_eq!(profile_number("system-link"), None);
    assert_eq!(profile_number("system"), None);
}

#[test]
fn states() {
    let e = names(&["a+1-2", "b.good", "b+0-3", "c+0-1", "c+2-0", "+0-1", "d+x"]);
    assert_eq!(
        state_of("a", &e),
        State::Counting {
            counter: Counter {
                left: 1,
                done: Some(2)
            },
            file: "a+1-2".into()
        }
    );
    assert_eq!(state_of("b", &e), State::Good);
    assert_eq!(state_of("c", &e).describe(), "+0-1");
    assert_eq!(state_of("d", &e), State::Untried);
}

#[test]
fn untried_gets_a_counter() {
    let c = decide("h3-nixos-system-x-3", &profiles(), &[], 3);
    assert_eq!(c.reason, Reason::Requested);
    assert_eq!(c.number, Some(3));
    assert_eq!(c.before, State::Untried);
    assert_eq!(c.after.describe(), "+2-1");
    let c = decide("h3-nixos-system-x-3", &profiles(), &[], 1);
    assert_eq!(c.after.describe(), "+0-1");
}

#[test]
fn counting_and_good() {
    let e = names(&["h3-nixos-system-x-3+1-2"]);
    let c = decide("h3-nixos-system-x-3", &profiles(), &e, 3);
    assert_eq!(c.after.describe(), "+0-3");
    let e = names(&["h3-nixos-system-x-3.good"]);
    let c = decide("h3-nixos-system-x-3", &profiles(), &e, 3);
    assert_eq!((c.before, c.after), (State::Good, State::Good));
}

#[test]
fn exhausted_falls_back_to_newest_good_older() {
    let e = names(&[
        "h3-nixos-system-x-3+0-3",
        "h1-nixos-system-x-1.good",
        "h2-nixos-system-x-2+0-3",
    ]);
    let c = decide("h3-nixos-system-x-3", &profiles(), &e, 3);
    assert_eq!(c.base, "h1-nixos-system-x-1");
    assert_eq!(c.number, Some(1));
    assert_eq!(
        c.reason,
        Reason::Fallback {
            from: "h3-nixos-system-x-3".into(),
            from_number: Some(3),
            failed_boots: 3
        }
    );
    assert_eq!(c.after, State::Good);
}

#[test]
fn good_beats_newer_untried_then_untried_beats_nothing() {
    let e = names(&["h3-nixos-system-x-3+0-1", "h1-nixos-system-x-1.good"]);
    assert_eq!(
        decide("h3-nixos-system-x-3", &profiles(), &e, 3).base,
        "h1-nixos-system-x-1"
    );
    let e = names(&["h2-nixos-system-x-2+0-1"]);
    let c = decide("h2-nixos-system-x-2", &profiles(), &e, 1);
    assert_eq!(c.base, "h1-nixos-system-x-1");
    assert_eq!(c.after.describe(), "+0-1");
}

#[test]
fn newer_generations_are_not_fallbacks() {
    let e = names(&["h1-nixos-system-x-1+0-2", "h3-nixos-system-x-3.good"]);
    let c = decide("h1-nixos-system-x-1", &profiles(), &e, 3);
    assert_eq!(c.reason, Reason::Exhausted { failed_boots: 2 });
    assert_eq!(c.base, "h1-nixos-system-x-1");
    assert_eq!(c.before, c.after);
}

#[test]
fn apply_renames_on_disk() {
    let tmp = tempfile::tempdir().expect("test setup");
    let dir = state_dir(tmp.path());
    let base = "h2-nixos-system-x-2";
    let run = |tries| {
        let e = list_state(&dir).expect("test setup");
        let c = decide(base, &profiles(), &e, tries);
        apply(&dir, &c).expect("test setup");
        c
    };
    let c = run(2);
    assert_eq!(c.after.describe(), "+1-1");
    assert_eq!(
        list_state(&dir).expect("test setup"),
        names(&["h2-nixos-system-x-2+1-1"])
    );
    run(2);
    assert_eq!(
        list_state(&dir).expect("test setup"),
        names(&["h2-nixos-system-x-2+0-2"])
    );
    let c = run(2);
    assert_eq!(c.base, "h1-nixos-system-x-1");
    let mut e = list_state(&dir).expect("test setup");
    e.sort();
    assert_eq!(
        e,
        names(&["h1-nixos-system-x-1+1-1", "h2-nixos-system-x-2+0-2"])
    );
}

#[test]
fn profiles_and_toplevel() {
    let tmp = tempfile::tempdir().expect("test setup");
    let p = tmp.path();
    std::os::unix::fs::symlink("/nix/store/h1-sys-1", p.join("system-1-link")).expect("test setup");
    std::os::unix::fs::symlink("/nix/store/h2-sys-2", p.join("system-2-link")).expect("test setup");
    std::os::unix::fs::symlink("system-2-link", p.join("system")).expect("test setup");
    assert_eq!(
        list_profiles(p),
        vec![
            Profile {
                number: 1,
                base: "h1-sys-1".into()
            },
            Profile {
                number: 2,
                base: "h2-sys-2".into()
            }
        ]
    );
    assert_eq!(
        toplevel_base("/nix/store/h1-sys-1/init").as_deref(),
        Some("h1-sys-1")
    );
    assert_eq!(toplevel_base("/init"), None);
    assert_eq!(toplevel_base("/nix/store/a/b/init"), None);
}

#[test]
fn json_escapes_and_shape() {
    assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    let e = names(&["b+0-1"]);
    let p = vec![
        Profile {
            number: 1,
            base: "a".into(),
        },
        Profile {
            number: 2,
            base: "b".into(),
        },
    ];
    let c = decide("b", &p, &e, 1);
    let j = stage1_json(
        Some("b"),
        Some(&c),
        "/nix/store/a/init",
        1,
        &Times::default(),
    );
    assert!(j.contains("\"reason\":\"fallback\""), "{j}");
    assert!(j.contains(",\"phases\":[]}"), "{j}");
    assert!(j.contains("\"from_generation\":2"), "{j}");
    assert!(
        j.contains("\"counter\":{\"before\":\"untried\",\"after\":\"+0-1\"}"),
        "{j}"
    );
}

/// What stage 1 writes by hand is what stage 2 and the blesser read through the typed,
/// strict reader, for every kind of decision, with the times and phases intact.
#[test]
fn the_receipt_round_trips_through_the_typed_reader() {
    use stagehand_boot::receipt::{self as typed, CounterState, Stage1Receipt};
    let mut times = Times {
        start_us: 100,
        modules_us: 7,
        mounts_us: 30,
        attempts_us: 2,
        end_us: 190,
        finit_us: 5,
        device_wait_us: 11,
        peak_rss_kib: Some(1234),
        cpu_us: 60,
        user_cpu_us: Some(9),
        ..Times::default()
    };
    times.phases.push("modules", 110, 117);
    times.phases.push("fsck /", 118, 121);
    times.phases.push("mount \"/\" \\ \u{1}é", 121, 150);
    let p = profiles();
    let untried = decide("h3-nixos-system-x-3", &p, &[], 3);
    let counting = decide(
        "h3-nixos-system-x-3",
        &p,
        &names(&["h3-nixos-system-x-3+1-2"]),
        3,
    );
    let good = decide(
        "h3-nixos-system-x-3",
        &p,
        &names(&["h3-nixos-system-x-3.good"]),
        3,
    );
    let failed = names(&["h3-nixos-system-x-3+0-3", "h1-nixos-system-x-1.good"]);
    let fallback = decide("h3-nixos-system-x-3", &p, &failed, 3);
    let exhausted = decide(
        "h1-nixos-system-x-1",
        &p,
        &names(&["h1-nixos-system-x-1+0-2"]),
        3,
    );
    // A failed generation no profile link names: from_generation is null.
    let unnumbered = decide("h9-sys", &p, &names(&["h9-sys+0-1"]), 1);
    let c = |left, done| {
        CounterState::Counting(Counter {
            left,
            done: Some(done),
        })
    };
    let cases = [
        (
            Some(&untried),
            typed::Reason::Requested,
            Some(3),
            (CounterState::Untried, c(2, 1)),
        ),
        (
            Some(&counting),
            typed::Reason::Requested,
            Some(3),
            (c(1, 2), c(0, 3)),
        ),
        (
            Some(&good),
            typed::Reason::Requested,
            Some(3),
            (CounterState::Good, CounterState::Good),
        ),
        (
            Some(&fallback),
            typed::Reason::Fallback,
            Some(1),
            (CounterState::Good, CounterState::Good),
        ),
        (
            Some(&exhausted),
            typed::Reason::Exhausted,
            Some(1),
            (c(0, 2), c(0, 2)),
        ),
        (
            Some(&unnumbered),
            typed::Reason::Fallback,
            Some(3),
            (CounterState::Untried, c(0, 1)),
        ),
    ];
    let path = Path::new(STAGE1_RECEIPT);
    for (choice, reason, generation, (before, after)) in cases {
        let choice = choice.expect("case");
        let init = format!("/nix/store/{}/init", choice.base);
        let text = stage1_json(Some("h3-nixos-system-x-3"), Some(choice), &init, 3, &times);
        let r =
            Stage1Receipt::parse(path, text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(r.version, typed::VERSION, "{text}");
        assert_eq!((r.init.as_str(), r.tries), (init.as_str(), 3), "{text}");
        assert_eq!(
            r.requested.as_deref(),
            Some("h3-nixos-system-x-3"),
            "{text}"
        );
        assert_eq!(r.booted.as_deref(), Some(choice.base.as_str()), "{text}");
        assert_eq!((r.reason, r.generation), (reason, generation), "{text}");
        let counter = r.counter.expect("counter");
        assert_eq!((counter.before, counter.after), (before, after), "{text}");
        assert_eq!(r.counting, None, "{text}");
        match &choice.reason {
            Reason::Fallback {
                from,
                from_number,
                failed_boots,
            } => {
                assert_eq!(
                    r.fallback,
                    Some(typed::Fallback {
                        from: from.clone(),
                        from_generation: *from_number,
                        failed_boots: *failed_boots,
                    }),
                    "{text}"
                );
                assert_eq!(r.failed_boots, None, "{text}");
            }
            Reason::Exhausted { failed_boots } => {
                assert_eq!(r.fallback, None, "{text}");
                assert_eq!(r.failed_boots, Some(*failed_boots), "{text}");
            }
            Reason::Requested => {
                assert_eq!((&r.fallback, r.failed_boots), (&None, None), "{text}")
            }
        }
        let t = &r.times_us;
        assert_eq!(
            (
                t.start_us,
                t.modules_us,
                t.mounts_us,
                t.attempts_us,
                t.end_us,
                t.total_us
            ),
            (100, 7, 30, 2, 190, 90),
            "{text}"
        );
        // Own work: 90 less finit_module 5, fsck 3 and the wait for the disk 11.
        assert_eq!(
            (t.finit_module_us, t.fsck_us, t.device_wait_us, t.own_us),
            (Some(5), Some(3), Some(11), Some(71)),
            "{text}"
        );
        assert_eq!((t.cpu_us, t.user_cpu_us), (Some(60), Some(9)), "{text}");
        assert_eq!(r.peak_rss_kib, Some(1234), "{text}");
        assert_eq!(t.phases, times.phases, "{text}");
    }
    // Not counting: no decision, and the receipt says so.
    let text = stage1_json(None, None, "/init", 0, &Times::default());
    let r = Stage1Receipt::parse(path, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    // No VmHWM (no /proc): the key is left out and reads as unknown.
    assert_eq!(r.peak_rss_kib, None, "{text}");
    assert_eq!(r.times_us.user_cpu_us, None, "{text}");
    assert_eq!(
        (r.reason, r.counting, r.tries),
        (typed::Reason::Requested, Some(false), 0)
    );
    assert_eq!(
        (r.booted.as_deref(), r.counter, r.counted_generation()),
        (None, None, None)
    );
    assert!(r.times_us.phases.0.is_empty());
}
