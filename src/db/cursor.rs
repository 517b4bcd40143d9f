//! `Cursor`: where an event sits in the change log.

use std::{fmt, str::FromStr};

/// Position of one change: the commit's position, then the change's id
/// within that commit. Cursors order exactly like the log does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    pub position: i64,
    pub change: i64,
}

impl Cursor {
    pub fn new(position: i64, change: i64) -> Self {
        Cursor { position, change }
    }
}

/// Rendered as an opaque token; clients pass it back unchanged.
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tw1:{:x}:{:x}", self.position, self.change)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cursor: pass back the `cursor` of a received item unchanged")]
pub struct BadCursor(pub String);

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCursor(text.chars().take(64).collect());
        let rest = text.strip_prefix("tw1:").ok_or_else(bad)?;
        let (position, change) = rest.split_once(':').ok_or_else(bad)?;
        let parse = |s: &str| i64::from_str_radix(s, 16).ok().filter(|n| *n >= 0);
        Ok(Cursor {
            position: parse(position).ok_or_else(bad)?,
            change: parse(change).ok_or_else(bad)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cursor = Cursor::new(1234, 99);
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
    }

    #[test]
    fn orders_by_position_then_change() {
        assert!(Cursor::new(1, 50) < Cursor::new(2, 3));
        assert!(Cursor::new(2, 3) < Cursor::new(2, 4));
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "", "tw1:", "tw1:zz:1", "tw1:1", "tw2:1:1", "tw1:-1:2", "1:2",
        ] {
            assert!(text.parse::<Cursor>().is_err(), "{text}");
        }
    }
}
