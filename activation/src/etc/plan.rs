//! The pure decision of the etc step: from the tree and the observed state, the changes.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt;

use super::observe::{self, EtcState};
use super::tree::{EntryKind, EtcTree, Install, Owner, TreeEntry};
use super::{is_safe_rel, EtcIssue, STATIC};
use stagehand_common::rootfs::{Node, Perms, Root};

/// One change to `/etc`. Paths are relative to `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcAction {
    SetStatic {
        target: String,
    },
    RemoveObsoleteLink {
        rel: String,
    },
    EnsureDir {
        rel: String,
    },
    RemoveStaticDir {
        rel: String,
    },
    Link {
        rel: String,
        target: String,
        /// Nothing was at `/etc/<rel>`: the link can be made in place (creating a name is
        /// atomic), without a temporary name and a rename.
        fresh: bool,
    },
    Copy {
        rel: String,
        source: String,
        perms: Perms,
    },
    RemoveObsoleteFile {
        rel: String,
    },
    WriteClean {
        contents: String,
    },
    TouchNixos,
}

impl fmt::Display for EtcAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetStatic { target } => write!(f, "link /etc/static -> {target}"),
            Self::RemoveObsoleteLink { rel } => write!(f, "remove obsolete symlink /etc/{rel}"),
            Self::EnsureDir { rel } => write!(f, "create directory /etc/{rel}"),
            Self::RemoveStaticDir { rel } => {
                write!(
                    f,
                    "remove directory /etc/{rel} (only links into /etc/static)"
                )
            }
            Self::Link { rel, target, .. } => write!(f, "link /etc/{rel} -> {target}"),
            Self::Copy { rel, source, perms } => write!(
                f,
                "copy {source} to /etc/{rel} (mode {:04o}, owner {}:{})",
                perms.mode, perms.uid, perms.gid
            ),
            Self::RemoveObsoleteFile { rel } => write!(f, "remove obsolete file /etc/{rel}"),
            Self::WriteClean { .. } => write!(f, "rewrite /etc/.clean"),
            Self::TouchNixos => write!(f, "create /etc/NIXOS"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EtcPlan {
    pub actions: Vec<EtcAction>,
    /// Problems found while planning; the affected entries are left alone.
    pub issues: Vec<EtcIssue>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EtcOptions {
    /// `IN_NIXOS_ENTER`: `/etc/resolv.conf` is a bind mount owned by nixos-enter.
    pub skip_resolv_conf: bool,
}

fn starts_with_static_slash(t: &[u8]) -> bool {
    t.starts_with(b"/etc/static/")
}

/// Directories under `/etc` that hold something other than links into `/etc/static/`.
fn non_static_dirs(nodes: &HashMap<String, Node>) -> HashSet<&str> {
    let mut out = HashSet::default();
    for (rel, node) in nodes {
        let leaf_static = match node {
            Node::Symlink(t) => starts_with_static_slash(t),
            Node::Dir { .. } => true,
            _ => false,
        };
        // /etc/nixos's contents were not walked: count it as holding user files.
        if !leaf_static || rel == "nixos" {
            let mut cur = rel.as_str();
            if rel == "nixos" {
                out.insert("nixos");
            }
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if !out.insert(parent) {
                    break;
                }
                cur = parent;
            }
        }
    }
    out
}

/// Decide what to change. Pure: everything it needs is in `tree` and `state`.
pub fn plan(tree: &EtcTree, state: &EtcState, opts: EtcOptions) -> EtcPlan {
    let mut p = EtcPlan::default();
    if state.static_link != Some(Some(tree.path.clone())) {
        p.actions.push(EtcAction::SetStatic {
            target: tree.path.clone(),
        });
    }
    let by_rel: HashMap<&str, &TreeEntry> =
        tree.entries.iter().map(|e| (e.rel.as_str(), e)).collect();
    let removed = plan_stale_links(state, &by_rel, &mut p);
    let copied = plan_entries(tree, state, opts, &removed, &mut p);
    plan_obsolete_files(state, &by_rel, &removed, &mut p);
    plan_clean_and_tag(state, copied, &mut p);
    p
}

/// Links into `/etc/static` that the new tree no longer has as links are removed, in sorted
/// order so that plans are reproducible. Returns them: the later phases treat them as gone.
fn plan_stale_links<'s>(
    state: &'s EtcState,
    by_rel: &HashMap<&str, &TreeEntry>,
    p: &mut EtcPlan,
) -> HashSet<&'s str> {
    let mut stale: Vec<&str> = state
        .nodes
        .iter()
        .filter_map(|(rel, n)| match n {
            Node::Symlink(t) if t.starts_with(STATIC.as_bytes()) => Some(rel.as_str()),
            _ => None,
        })
        .filter(|rel| !observe::under_nixos(rel))
        .filter(|rel| {
            let still_link = by_rel
                .get(rel)
                .is_some_and(|e| matches!(e.kind, EntryKind::Symlink(_)))
                || state.deep_links.contains(*rel);
            !still_link
        })
        .collect();
    stale.sort_unstable();
    let removed: HashSet<&str> = stale.iter().copied().collect();
    for rel in &stale {
        p.actions.push(EtcAction::RemoveObsoleteLink {
            rel: (*rel).to_owned(),
        });
    }
    removed
}

/// Every tree entry, in pre-order: its parent directory, a directory in the way of its link,
/// and what it installs. Returns the entries `/etc/.clean` lists (copies and direct links).
fn plan_entries<'t>(
    tree: &'t EtcTree,
    state: &EtcState,
    opts: EtcOptions,
    removed: &HashSet<&str>,
    p: &mut EtcPlan,
) -> Vec<&'t str> {
    let non_static = non_static_dirs(&state.nodes);
    let mut ensured: HashSet<&str> = HashSet::default();
    let mut copied: Vec<&str> = Vec::new();
    for e in &tree.entries {
        if !is_safe_rel(&e.rel) {
            p.issues.push(EtcIssue::UnsafePath { rel: e.rel.clone() });
            continue;
        }
        if opts.skip_resolv_conf && e.rel == "resolv.conf" {
            continue;
        }
        if let Some((parent, _)) = e.rel.rsplit_once('/') {
            plan_parent_dir(parent, state, removed, &mut ensured, p);
        }
        let current = state
            .nodes
            .get(&e.rel)
            .filter(|_| !removed.contains(e.rel.as_str()));
        if matches!(e.kind, EntryKind::Symlink(_)) && matches!(current, Some(Node::Dir { .. })) {
            if non_static.contains(e.rel.as_str()) {
                p.issues.push(EtcIssue::UserFilesInDir {
                    path: format!("/etc/{}", e.rel),
                });
            } else {
                p.actions
                    .push(EtcAction::RemoveStaticDir { rel: e.rel.clone() });
            }
        }
        if plan_install(tree, e, current, state, p) {
            copied.push(&e.rel);
        }
    }
    copied
}

/// make_path(dirname): a parent that is not a real directory now is created (or, for a
/// user's symlink to a directory, followed inside the root by the executor). `ensured`
/// holds the directories known to exist once the actions so far are done.
fn plan_parent_dir<'t>(
    parent: &'t str,
    state: &EtcState,
    removed: &HashSet<&str>,
    ensured: &mut HashSet<&'t str>,
    p: &mut EtcPlan,
) {
    // A user's symlink to a directory is followed (inside the root), as make_path does.
    let is_dir = (matches!(state.nodes.get(parent), Some(Node::Dir { .. }))
        || state.linked_dirs.contains(parent))
        && !removed.contains(parent);
    if !is_dir && !ensured.contains(parent) {
        p.actions.push(EtcAction::EnsureDir {
            rel: parent.to_owned(),
        });
    }
    // Everything above it exists after this, too (and once one is known to, so
    // are the ones above it).
    let mut cur = parent;
    loop {
        if !ensured.insert(cur) {
            break;
        }
        match cur.rsplit_once('/') {
            Some((up, _)) => cur = up,
            None => break,
        }
    }
}

/// Whether `current` is a link to the concatenation of `target`'s parts, decided without
/// building the target first: this runs for every entry.
fn links_to(current: Option<&Node>, target: &[&[u8]]) -> bool {
    match current {
        Some(Node::Symlink(t)) => {
            t.len() == target.iter().map(|p| p.len()).sum::<usize>() && {
                let mut rest = t.as_slice();
                target.iter().all(|part| match rest.strip_prefix(*part) {
                    Some(r) => {
                        rest = r;
                        true
                    }
                    None => false,
                })
            }
        }
        _ => false,
    }
}

/// What entry `e` installs at `/etc/<rel>`, where `current` is what is there now (`None`
/// also when the stale-link phase removes it). Returns whether `/etc/.clean` lists the
/// entry (a copy or a direct link).
fn plan_install(
    tree: &EtcTree,
    e: &TreeEntry,
    current: Option<&Node>,
    state: &EtcState,
    p: &mut EtcPlan,
) -> bool {
    let link_to = |target: String, p: &mut EtcPlan| {
        if !links_to(current, &[target.as_bytes()]) {
            p.actions.push(EtcAction::Link {
                rel: e.rel.clone(),
                target,
                fresh: current.is_none() && !state.nodes.contains_key(&e.rel),
            });
        }
    };
    match &e.install {
        Install::Nothing => false,
        Install::Invalid(issue) => {
            p.issues.push(issue.clone());
            false
        }
        Install::Link => {
            if !links_to(current, &[STATIC.as_bytes(), b"/", e.rel.as_bytes()]) {
                link_to(format!("{STATIC}/{}", e.rel), p);
            }
            false
        }
        Install::Direct(target) => {
            link_to(target.clone(), p);
            true
        }
        Install::Copy { mode, user, group } => {
            let perms = copy_perms(tree, e, *mode, (user, group), state, p);
            let up_to_date = matches!(current, Some(Node::File { mode, uid, gid, .. })
                if *mode == perms.mode && *uid == perms.uid && *gid == perms.gid)
                && state.same_content.contains(&e.rel);
            if !up_to_date {
                p.actions.push(EtcAction::Copy {
                    rel: e.rel.clone(),
                    source: format!("{}/{}", tree.path, e.rel),
                    perms,
                });
            }
            true
        }
    }
}

/// The owner and mode of a copy: names are looked up in the root's `/etc/passwd` and
/// `/etc/group`; an unknown one is reported and becomes root (0).
fn copy_perms(
    tree: &EtcTree,
    e: &TreeEntry,
    mode: u32,
    (user, group): (&Owner, &Owner),
    state: &EtcState,
    p: &mut EtcPlan,
) -> Perms {
    let sidecar = |ext: &str| format!("{}/{}{ext}", tree.path, e.rel);
    let uid = match user {
        Owner::Id(n) => *n,
        Owner::Name(n) => state.owners.users.get(n).copied().unwrap_or_else(|| {
            p.issues.push(EtcIssue::UnknownUser {
                sidecar: sidecar(".uid"),
                name: n.clone(),
            });
            0
        }),
    };
    let gid = match group {
        Owner::Id(n) => *n,
        Owner::Name(n) => state.owners.groups.get(n).copied().unwrap_or_else(|| {
            p.issues.push(EtcIssue::UnknownGroup {
                sidecar: sidecar(".gid"),
                name: n.clone(),
            });
            0
        }),
    };
    Perms { mode, uid, gid }
}

/// Files copied by an earlier generation that this one does not have at all are removed.
fn plan_obsolete_files(
    state: &EtcState,
    by_rel: &HashMap<&str, &TreeEntry>,
    removed: &HashSet<&str>,
    p: &mut EtcPlan,
) {
    for rel in &state.old_clean {
        if by_rel.contains_key(rel.as_str()) {
            continue;
        }
        if !is_safe_rel(rel) {
            p.issues.push(EtcIssue::UnsafePath { rel: rel.clone() });
            continue;
        }
        if matches!(
            state.nodes.get(rel),
            Some(Node::File { .. } | Node::Symlink(_) | Node::Other)
        ) && !removed.contains(rel.as_str())
        {
            p.actions
                .push(EtcAction::RemoveObsoleteFile { rel: rel.clone() });
        }
    }
}

/// `/etc/.clean` is rewritten when its list of `copied` entries changes (or it is not a
/// file), and `/etc/NIXOS` is created when missing.
fn plan_clean_and_tag(state: &EtcState, mut copied: Vec<&str>, p: &mut EtcPlan) {
    copied.sort_unstable();
    let lines = |rels: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for r in rels {
            text.push_str(r);
            text.push('\n');
        }
        text
    };
    let clean = lines(&mut copied.iter().copied());
    let old = lines(&mut state.old_clean.iter().map(String::as_str));
    if clean != old || !matches!(state.nodes.get(".clean"), Some(Node::File { .. })) {
        p.actions.push(EtcAction::WriteClean { contents: clean });
    }
    if !state.nixos_tag {
        p.actions.push(EtcAction::TouchNixos);
    }
}

/// [`plan`] for a state from [`observe_with`], which leaves `deep_links` empty: when the
/// plan removes links the tree does not list, ask the store which of them its symlinked
/// directories still hold, and plan again with that.
pub(super) fn plan_observed(
    root: &Root,
    tree: &EtcTree,
    state: &mut EtcState,
    opts: EtcOptions,
) -> EtcPlan {
    let p = plan(tree, state, opts);
    let stale = p.actions.iter().filter_map(|a| match a {
        EtcAction::RemoveObsoleteLink { rel } => Some(rel.as_str()),
        _ => None,
    });
    state.deep_links = observe::deep_links(root, tree, stale);
    if state.deep_links.is_empty() {
        p
    } else {
        plan(tree, state, opts)
    }
}
