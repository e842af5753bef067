//! A panic in PID 1 goes through the one failure path.
//!
//! Without a hook, a panic prints to stderr (a console that may not exist) and then
//! unwinds or, in release builds (`panic = "abort"`), aborts: PID 1 dies, the kernel
//! panics, and the user never sees the failure menu. The hook installed here logs the
//! message and its location through the `log` backend (the kmsg logger) and calls
//! [`fail`] with the stage's current [`FailurePolicy`]. The hook runs before the abort,
//! so it does not return while the menu can still be offered: a panic leaves nothing to
//! continue with, so "continue" brings the menu back, and only reboot, the `f` shell or
//! `boot.panic_on_fail` (PID 1 exits on purpose) end it.

use std::any::Any;
use std::ops::ControlFlow;
use std::panic::Location;
use std::sync::{Mutex, PoisonError};

use crate::emergency::{fail, FailurePolicy};

/// The step a panic is reported as: a panic is an internal check that failed.
pub const PANIC_STEP: &str = "an internal check";

/// Where a panic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PanicRoute {
    /// PID 1: the failure menu under this policy.
    Menu(FailurePolicy),
    /// A service (stage 2 in the systemd initrd): the message, then exit status 1, as
    /// every other failure of that program.
    Exit,
}

/// The failure path as the hook drives it; tests substitute a recorder.
pub trait FailurePath {
    /// Show the menu; `Continue` when the user chose to continue (the real [`fail`]
    /// returned), `Break` to stop offering it (only a test does that).
    fn menu(&mut self, policy: &FailurePolicy, step: &str, message: &str) -> ControlFlow<()>;
    /// Log the failure and exit with status 1 (does not return in production).
    fn exit(&mut self, step: &str, message: &str);
}

/// The real failure path: [`fail`], and `exit(1)`.
struct Boot;

impl FailurePath for Boot {
    fn menu(&mut self, policy: &FailurePolicy, step: &str, message: &str) -> ControlFlow<()> {
        fail(policy, step, message);
        ControlFlow::Continue(())
    }

    fn exit(&mut self, step: &str, message: &str) {
        log::error!("{step} failed: {message}");
        std::process::exit(1);
    }
}

/// The route the hook uses, updated as the stage learns its policy. Nothing that can
/// panic runs while it is locked, so the hook cannot wait on itself.
static ROUTE: Mutex<Option<PanicRoute>> = Mutex::new(None);

/// Install the hook for this process with `route`; later policy changes go through
/// [`set_route`].
pub fn install(route: PanicRoute) {
    install_with(route, || Boot);
}

/// [`install`] with another failure path (made fresh for each panic).
pub fn install_with<P: FailurePath + 'static>(route: PanicRoute, path: fn() -> P) {
    set_route(route);
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_message(info.payload(), info.location());
        let route = ROUTE.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // No route yet means install() did not run; a menu without shell or console
        // choices is still better than an abort.
        let route = route.unwrap_or(PanicRoute::Menu(FailurePolicy::new(
            "stagehand stopped on an internal error.",
        )));
        route_panic(&route, &message, &mut path());
    }));
}

/// The policy a panic from now on goes through (each stage calls it whenever its own
/// failure policy changes, e.g. after reading the command line).
pub fn set_route(route: PanicRoute) {
    *ROUTE.lock().unwrap_or_else(PoisonError::into_inner) = Some(route);
}

/// `panicked at FILE:LINE:COL: MESSAGE`, as Rust's own hook says it.
pub fn panic_message(payload: &dyn Any, location: Option<&Location<'_>>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(the panic carried no text)");
    match location {
        Some(l) => format!(
            "panicked at {}:{}:{}: {text}",
            l.file(),
            l.line(),
            l.column()
        ),
        None => format!("panicked: {text}"),
    }
}

/// Send one panic's `message` down `route`. With the menu, "continue" is not possible
/// (the code that panicked has no state to continue from), so the menu is offered again,
/// saying so, until the path stops it.
pub fn route_panic(route: &PanicRoute, message: &str, path: &mut impl FailurePath) {
    match route {
        PanicRoute::Exit => path.exit(PANIC_STEP, message),
        PanicRoute::Menu(policy) => {
            if path.menu(policy, PANIC_STEP, message).is_break() {
                return;
            }
            let again = format!(
                "{message}; continuing is not possible after an internal error: \
                 reboot, or use a shell when one is offered"
            );
            while path.menu(policy, PANIC_STEP, &again).is_continue() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each call; breaks the menu loop after `continues` continues.
    #[derive(Default)]
    struct Recorder {
        menus: Vec<(FailurePolicy, String, String)>,
        exits: Vec<(String, String)>,
        continues: usize,
    }

    impl FailurePath for Recorder {
        fn menu(&mut self, policy: &FailurePolicy, step: &str, message: &str) -> ControlFlow<()> {
            self.menus
                .push((policy.clone(), step.to_owned(), message.to_owned()));
            if self.menus.len() > self.continues {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }

        fn exit(&mut self, step: &str, message: &str) {
            self.exits.push((step.to_owned(), message.to_owned()));
        }
    }

    fn policy() -> FailurePolicy {
        FailurePolicy {
            header: "stage N",
            panic_on_fail: false,
            shell_on_fail: true,
            console: Some("ttyS0".into()),
        }
    }

    #[test]
    fn the_message_names_the_location_and_the_text() {
        let here = Location::caller();
        let at = format!("{}:{}:{}", here.file(), here.line(), here.column());
        let s: &str = "index out of bounds";
        assert_eq!(
            panic_message(&s, Some(here)),
            format!("panicked at {at}: index out of bounds")
        );
        let owned = String::from("bad byte 0x1f");
        assert_eq!(
            panic_message(&owned, Some(here)),
            format!("panicked at {at}: bad byte 0x1f")
        );
        assert_eq!(
            panic_message(&42_u32, None),
            "panicked: (the panic carried no text)"
        );
    }

    #[test]
    fn the_menu_comes_back_after_continue() {
        let mut path = Recorder {
            continues: 2,
            ..Recorder::default()
        };
        route_panic(
            &PanicRoute::Menu(policy()),
            "panicked at x.rs:1:2: boom",
            &mut path,
        );
        assert!(path.exits.is_empty());
        assert_eq!(path.menus.len(), 3, "{:?}", path.menus);
        for (p, step, message) in &path.menus {
            assert_eq!(p, &policy());
            assert_eq!(step, PANIC_STEP);
            assert!(
                message.starts_with("panicked at x.rs:1:2: boom"),
                "{message}"
            );
        }
        assert!(path.menus[1].2.contains("continuing is not possible"));
    }

    #[test]
    fn a_service_exits() {
        let mut path = Recorder::default();
        route_panic(&PanicRoute::Exit, "panicked at y.rs:3:4: boom", &mut path);
        assert!(path.menus.is_empty());
        assert_eq!(
            path.exits,
            [(
                PANIC_STEP.to_owned(),
                "panicked at y.rs:3:4: boom".to_owned()
            )]
        );
    }
}
