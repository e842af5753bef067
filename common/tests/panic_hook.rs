//! A real panic through the installed hook reaches the failure path with the stage's
//! current policy (one test: the hook is global to the process).

// A test may index, expect and panic: a failure should stop at the line that failed.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::ops::ControlFlow;
use std::sync::Mutex;

use stagehand_common::emergency::FailurePolicy;
use stagehand_common::panic_hook::{self, FailurePath, PanicRoute, PANIC_STEP};

/// What the hook sent to the failure path: (policy header, shell_on_fail, step, message).
static SEEN: Mutex<Vec<(String, bool, String, String)>> = Mutex::new(Vec::new());

/// Records the menu once and stops (the real path never stops).
struct Recorder;

impl FailurePath for Recorder {
    fn menu(&mut self, policy: &FailurePolicy, step: &str, message: &str) -> ControlFlow<()> {
        SEEN.lock().unwrap_or_else(|e| e.into_inner()).push((
            policy.header.to_owned(),
            policy.shell_on_fail,
            step.to_owned(),
            message.to_owned(),
        ));
        ControlFlow::Break(())
    }

    fn exit(&mut self, step: &str, message: &str) {
        SEEN.lock().unwrap_or_else(|e| e.into_inner()).push((
            "exit".to_owned(),
            false,
            step.to_owned(),
            message.to_owned(),
        ));
    }
}

fn seen() -> Vec<(String, bool, String, String)> {
    std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()))
}

#[test]
fn a_panic_goes_to_the_failure_path_with_the_current_policy() {
    panic_hook::install_with(PanicRoute::Menu(FailurePolicy::new("stage T")), || Recorder);

    let line = line!() + 1;
    let caught = std::panic::catch_unwind(|| panic!("first: {}", 1));
    assert!(caught.is_err());
    let first = seen();
    assert_eq!(first.len(), 1, "{first:?}");
    let (header, shell, step, message) = &first[0];
    assert_eq!(
        (header.as_str(), *shell, step.as_str()),
        ("stage T", false, PANIC_STEP)
    );
    let at = format!("panicked at {}:{line}:", file!());
    assert!(
        message.starts_with(&at) && message.ends_with(": first: 1"),
        "{message} (expected {at}...)"
    );

    // The command line was read: the policy changed, and the next panic uses it.
    let mut policy = FailurePolicy::new("stage T");
    policy.shell_on_fail = true;
    panic_hook::set_route(PanicRoute::Menu(policy));
    let _ = std::panic::catch_unwind(|| panic!("second"));
    let second = seen();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].1, "the updated policy was not used: {second:?}");
    assert!(second[0].3.ends_with(": second"), "{second:?}");

    panic_hook::set_route(PanicRoute::Exit);
    let _ = std::panic::catch_unwind(|| panic!("third"));
    let third = seen();
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!(third[0].0, "exit");
    assert!(third[0].3.ends_with(": third"), "{third:?}");
}
