//! The kernel command line as `/proc/cmdline` gives it: whitespace-separated words,
//! `key=value` or bare flags, where double quotes group a value that contains spaces
//! (`foo="a b"`). The kernel strips nothing we care about; later words win.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut have_word = false;
        for c in text.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    have_word = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if have_word {
                        params.push(split(&word));
                        word.clear();
                        have_word = false;
                    }
                }
                c => {
                    word.push(c);
                    have_word = true;
                }
            }
        }
        if have_word {
            params.push(split(&word));
        }
        Self { params }
    }

    /// The value of the last `key=value` for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, v)| k == key && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every value given for `key`, in order (`console=` may appear several times).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(k, _)| k == key)
            .filter_map(|(_, v)| v.as_deref())
    }

    /// True when `key` appears as a bare flag or as `key=1`/`key=true`/`key=yes`.
    pub fn flag(&self, key: &str) -> bool {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .is_some_and(|(_, v)| match v.as_deref() {
                None => true,
                Some(v) => matches!(v, "1" | "true" | "yes" | "y" | "on"),
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

fn split(word: &str) -> (String, Option<String>) {
    match word.split_once('=') {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (word.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_flags_and_quotes() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=/k console=tty0 console=ttyS0,115200 init=/nix/store/x-system/init \
             boot.shell_on_fail foo=\"a b\" stage1panic=1 root=LABEL=nixos quiet\n",
        );
        assert_eq!(c.get("init"), Some("/nix/store/x-system/init"));
        assert_eq!(c.get("console"), Some("ttyS0,115200"));
        assert_eq!(
            c.get_all("console").collect::<Vec<_>>(),
            ["tty0", "ttyS0,115200"]
        );
        assert_eq!(c.get("root"), Some("LABEL=nixos"));
        assert_eq!(c.get("foo"), Some("a b"));
        assert!(c.flag("boot.shell_on_fail"));
        assert!(c.flag("stage1panic"));
        assert!(c.flag("quiet"));
        assert!(!c.flag("boot.panic_on_fail"));
        assert_eq!(c.get("quiet"), None);
    }

    #[test]
    fn later_words_win_and_zero_is_false() {
        let c = Cmdline::parse("init=/a init=/b stage1panic=0");
        assert_eq!(c.get("init"), Some("/b"));
        assert!(!c.flag("stage1panic"));
        assert_eq!(Cmdline::parse("   ").iter().count(), 0);
    }
}
