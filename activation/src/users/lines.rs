//! The account files' lines (`/etc/group`, `/etc/passwd`), parsed into fields borrowed
//! from the files as read, and written back.

use std::borrow::Cow;

use super::UsersState;

/// An id field as found: the number, or the text when it is not one, so that a line we do
/// not manage is written back as it was rather than with the field emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdField<'a> {
    pub(super) id: Option<u32>,
    pub(super) text: &'a str,
}

impl<'a> IdField<'a> {
    pub(super) fn parse(text: &'a str) -> Self {
        IdField {
            id: text.parse().ok(),
            text,
        }
    }

    pub(super) fn num(id: u32) -> Self {
        IdField {
            id: Some(id),
            text: "",
        }
    }
}

impl IdField<'_> {
    pub(super) fn push_to(&self, out: &mut String) {
        match self.id {
            Some(id) => push_num(out, id.into()),
            None => out.push_str(self.text),
        }
    }
}

/// Append `n` in decimal (what `write!` does, without the formatting machinery, which is
/// most of the cost of writing a thousand lines).
pub(super) fn push_num(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Append `fields` joined by `:` and a newline.
pub(super) fn push_line(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(f);
    }
    out.push('\n');
}

/// A group file line, its fields borrowed from the file or the spec.
#[derive(Debug, Clone)]
pub(super) struct GroupLine<'a> {
    pub(super) name: &'a str,
    pub(super) password: &'a str,
    pub(super) gid: IdField<'a>,
    pub(super) members: Cow<'a, str>,
}

/// A passwd file line, its fields borrowed from the file or the spec.
#[derive(Debug, Clone)]
pub(super) struct PasswdLine<'a> {
    pub(super) name: &'a str,
    pub(super) password: &'a str,
    pub(super) uid: IdField<'a>,
    /// The primary group field: the file's text, or the number we decided.
    pub(super) gid: IdField<'a>,
    pub(super) description: &'a str,
    pub(super) home: &'a str,
    pub(super) shell: &'a str,
}

/// Split a line into exactly `N` fields; missing ones are empty, extra ones dropped (as
/// Perl's list assignment from `split` does).
pub(super) fn fields<const N: usize>(line: &str) -> [&str; N] {
    let mut f = [""; N];
    for (slot, v) in f.iter_mut().zip(line.split(':')) {
        *slot = v;
    }
    f
}

pub(super) fn parse_group(text: &str) -> impl Iterator<Item = GroupLine<'_>> {
    text.lines().filter(|l| !l.is_empty()).map(|l| {
        let [name, password, gid, members] = fields::<4>(l);
        GroupLine {
            name,
            password,
            gid: IdField::parse(gid),
            members: Cow::Borrowed(members),
        }
    })
}

pub(super) fn parse_passwd(text: &str) -> impl Iterator<Item = PasswdLine<'_>> {
    text.lines().filter(|l| !l.is_empty()).map(|l| {
        let [name, password, uid, gid, description, home, shell] = fields::<7>(l);
        PasswdLine {
            name,
            password,
            uid: IdField::parse(uid),
            gid: IdField {
                id: None,
                text: gid,
            },
            description,
            home,
            shell,
        }
    })
}

pub(super) fn text_of<'a>(state: &'a UsersState, path: &str) -> Cow<'a, str> {
    state
        .files
        .get(path)
        .and_then(|f| f.contents.as_deref())
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
}
